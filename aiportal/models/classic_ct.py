"""``classic-ct``: the embedded default model, no weights: body, lungs, airways and bone of a CT.

Pure numpy/scipy: Hounsfield thresholds, connected components and morphology. Heavy morphology runs
on a coarse grid (about 2.5 mm) and only the final boundaries are refined at full resolution, so a
512x512x300 CT takes seconds on two cores.

Every step works in a canonical array order (superior, posterior, patient-left) derived from
``ijk_to_ras``, so LPS DICOM, LAS and RAS NIfTI give the same result; masks are returned in the
input's (k, j, i) order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from aiportal.errors import ModelError
from aiportal.progress import CancelToken, ProgressCallback, no_progress

# Hounsfield thresholds (why each value: see the step that uses it).
BODY_MIN_HU = -500.0  # skin/fat vs air: anything denser than half-air is patient or table
LUNG_MAX_HU = -400.0  # aerated lung incl. partial volume at its border (parenchyma is ~-850)
GAS_HU = -950.0  # pure gas (bowel, stomach, trachea); lung parenchyma block means rarely go below
AIRWAY_CORE_HU = -925.0  # lumen air at full resolution: clear of parenchyma (~-850) and noise
AIRWAY_EDGE_HU = -480.0  # half-way air/wall: a lumen-edge voxel is at least half air
BONE_MIN_HU = 130.0  # faint bone (thick slices, old patients) is ~150 HU; soft tissue stays below
SOFT_TISSUE_HU = 40.0
HOMOGENEOUS_SD = 20.0  # local SD of contrast blood or cartilage: noise only
BONE_TEXTURE_WINDOW = 5  # voxels, in-plane, for the local SD
CONTRAST_MAX_HU = 700.0  # iodinated blood (CTA) stays below; thick cortex (humerus, femur) is denser

LUNG_MAX_VESSEL_MM2 = 1500.0  # largest in-plane hole of the lung mask filled as vessel/hilum
LUNG_MIN_DEPTH_MM = 6.0  # deepest in-plane point of a lung piece from its own edge
COARSE_SPACING_MM = 2.5  # grid for morphology and components


@dataclass
class ClassicCTMasks:
    """Separate, possibly overlapping masks in the input's (k, j, i) order (body contains the rest)."""

    body: np.ndarray
    lung_left: np.ndarray
    lung_right: np.ndarray
    airways: np.ndarray
    bone: np.ndarray


def check_ct_intensities(hu: np.ndarray, source_name: str) -> None:
    """Refuse images that are not CT in Hounsfield units (MR, PET, rescaled or windowed CT)."""
    sample = np.asarray(hu)[:: max(1, hu.shape[0] // 32)]  # a few dozen slices decide it
    values = sample.astype(np.float32, copy=False).ravel()
    low, high = np.percentile(values, [1, 99.5])
    air_fraction = float(np.mean((values > -1100) & (values < -850)))
    problems = []
    if low > -800:
        problems.append(f"no air near -1000 (1st percentile {low:.0f})")
    if air_fraction < 0.02:
        problems.append(f"only {100 * air_fraction:.1f}% of voxels between -1100 and -850")
    tissue_fraction = float(np.mean((values > -200) & (values < 300)))
    if tissue_fraction < 0.05:
        problems.append(f"only {100 * tissue_fraction:.1f}% of voxels in the soft-tissue range")
    if high > 5000 or high < 100:
        problems.append(f"99.5th percentile {high:.0f} not bone-like")
    if problems:
        raise ModelError(
            f"{source_name} does not look like CT in Hounsfield units: {'; '.join(problems)}",
            "classic-ct needs CT in Hounsfield units (HU); pick a CT volume or another model",
        )


# ---------------------------------------------------------------------------------------------
# orientation and grids


def _canonical_orientation(ijk_to_ras: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Array-axis permutation and flips that bring (k, j, i) to (superior, posterior, left)."""
    direction = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    # array axis a holds voxel index column 2 - a (axis 0 is k)
    columns = [direction[:, 2 - axis] / np.linalg.norm(direction[:, 2 - axis]) for axis in range(3)]
    targets = [np.array([0, 0, 1.0]), np.array([0, -1.0, 0]), np.array([-1.0, 0, 0])]  # S, P, L in RAS
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(columns[perm[n]] @ targets[n]) for n in range(3)),
    )
    flips = tuple(bool(columns[best[n]] @ targets[n] < 0) for n in range(3))
    return best, flips  # type: ignore[return-value]


def _to_canonical(array: np.ndarray, perm, flips) -> np.ndarray:
    out = np.transpose(array, perm)
    return out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def _from_canonical(array: np.ndarray, perm, flips) -> np.ndarray:
    out = array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return np.ascontiguousarray(np.transpose(out, np.argsort(perm)))


def _ras_x_of_canonical_columns(ijk_to_ras: np.ndarray, perm, flips, shape) -> np.ndarray:
    """RAS x (mm) of each canonical column, through the middle of the other two axes."""
    centre = [(n - 1) / 2.0 for n in shape]
    columns = np.arange(shape[2], dtype=float)
    x = np.empty(shape[2])
    for n, column in enumerate(columns):
        canonical = [centre[0], centre[1], column]
        kji = [0.0, 0.0, 0.0]
        for axis in range(3):
            index = canonical[axis]
            kji[perm[axis]] = shape[axis] - 1 - index if flips[axis] else index
        x[n] = (np.asarray(ijk_to_ras, dtype=float) @ [kji[2], kji[1], kji[0], 1.0])[0]
    return x


def _block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average over factor-sized blocks (edge-padded) as float32: the coarse grid."""
    if factors == (1, 1, 1):
        return volume.astype(np.float32)
    pad = [(0, (-n) % f) for n, f in zip(volume.shape, factors, strict=True)]
    padded = np.pad(volume, pad, mode="edge") if any(p[1] for p in pad) else volume
    shape = []
    for n, f in zip(padded.shape, factors, strict=True):
        shape += [n // f, f]
    return padded.reshape(shape).mean(axis=(1, 3, 5), dtype=np.float32)


def _upsample(mask: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    out = mask
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)  # slice-by-slice operations in one call


def _fill_holes_per_slice(mask: np.ndarray, max_hole_voxels: float | None = None) -> np.ndarray:
    """Fill 2D holes (up to max_hole_voxels each) in every axial slice; labelling the background
    is much faster than ndi.binary_fill_holes on big slices."""
    background, count = ndi.label(~mask, structure=_IN_PLANE)
    if count == 0:
        return mask.copy()
    border = np.zeros(count + 1, dtype=bool)
    for face in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True  # label 0 is the mask itself
    if max_hole_voxels is not None:
        border |= np.bincount(background.ravel(), minlength=count + 1) > max_hole_voxels
    return mask | ~border[background]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _largest_components(mask: np.ndarray, min_fraction: float, min_voxels: int = 1) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = (sizes >= min_fraction * sizes.max()) & (sizes >= min_voxels)
    return keep[labels]


# ---------------------------------------------------------------------------------------------
# stages (all on canonical arrays)


def _segment_body(coarse_hu: np.ndarray, coarse_mm: np.ndarray) -> np.ndarray:
    """Patient without table and blankets, holes (lungs, bowel gas) filled, on the coarse grid."""
    candidate = coarse_hu > BODY_MIN_HU
    # Tables and blankets are thin sheets: an in-plane opening of ~6 mm radius removes them and
    # cuts their contact with the skin; arms and trunk survive.
    radius = max(1, int(round(6.0 / float(min(coarse_mm[1:])))))
    opened = ndi.binary_opening(candidate, structure=_IN_PLANE, iterations=radius)
    voxel_ml = float(np.prod(coarse_mm)) / 1000.0
    kept = _largest_components(opened, min_fraction=0.02, min_voxels=int(20 / voxel_ml))
    body = ndi.binary_dilation(kept, structure=_IN_PLANE, iterations=radius + 1) & candidate
    return _fill_body_holes(body, coarse_hu)


def _fill_body_holes(body: np.ndarray, coarse_hu: np.ndarray) -> np.ndarray:
    """Fill lungs and bowel gas into the body per slice. A small field of view can cut through the
    patient so that a lung touches the image border; such a border stretch counts as body when the
    body meets the border on both sides of it and it is not pure air (outside air is -1000 HU)."""
    closed = body.copy()
    height, width = body.shape[1:]
    ring_rows = np.concatenate([np.zeros(width, int), np.arange(1, height), np.full(width - 1, height - 1),
                                np.arange(height - 2, 0, -1)])
    ring_cols = np.concatenate([np.arange(width), np.full(height - 1, width - 1), np.arange(width - 2, -1, -1),
                                np.zeros(height - 2, int)])
    for k in range(body.shape[0]):
        on_body = body[k, ring_rows, ring_cols]
        # only a field of view that truly cuts the patient (body along much of the border) is
        # bridged; a patient merely touching the edge (buttocks on the table) is not
        if on_body.mean() < 0.3 or on_body.all():
            continue
        pure_air = coarse_hu[k, ring_rows, ring_cols] < GAS_HU
        start = int(np.argmax(on_body))  # walk the ring from a body pixel, so every gap is flanked
        order = np.roll(np.arange(on_body.size), -start)
        gaps, _ = ndi.label(~on_body[order])
        for gap in ndi.find_objects(gaps):
            stretch = order[gap[0]]
            if stretch.size <= 0.5 * on_body.size and pure_air[stretch].mean() < 0.5:
                closed[k, ring_rows[stretch], ring_cols[stretch]] = True
    return _fill_holes_per_slice(closed)


def _lung_candidates(coarse_hu: np.ndarray, body: np.ndarray, coarse_mm: np.ndarray) -> np.ndarray:
    """Aerated lung on the coarse grid: air inside the body that is not gas (bowel, stomach).

    Told apart inside each air component, away from its partial-volume rim: gas is pure air, so
    its HU sits at the air level with a narrow spread; parenchyma is denser (~-850) and, even
    when dark (emphysema, deep inspiration: ~-950), its vessels and septa widen the spread.
    Components too thin to have an inside fall back to the fraction of pure-gas voxels.
    """
    air = (coarse_hu < LUNG_MAX_HU) & ndi.binary_erosion(body, structure=_IN_PLANE)
    labels, count = ndi.label(air)
    if count == 0:
        return air
    index = np.arange(1, count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    gas = np.bincount(labels.ravel(), weights=(coarse_hu < GAS_HU).ravel(), minlength=count + 1)[1:]
    gas_fraction = gas / np.maximum(sizes, 1)
    voxel_ml = float(np.prod(coarse_mm)) / 1000.0
    # lungs are thick; the air sheet trapped between an arm and the trunk is not
    depth_mm = ndi.distance_transform_edt(air, sampling=(1e4, coarse_mm[1], coarse_mm[2]))
    max_depth_mm = np.asarray(ndi.maximum(depth_mm, labels, index))
    inner_labels = np.where(ndi.binary_erosion(air, structure=_IN_PLANE), labels, 0)
    keep = np.zeros(count + 1, dtype=bool)
    boxes = ndi.find_objects(labels)
    for label in index[(sizes * voxel_ml >= 5.0) & (max_depth_mm >= LUNG_MIN_DEPTH_MM)]:
        box = boxes[label - 1]
        inside = coarse_hu[box][inner_labels[box] == label]
        if inside.size >= 30:
            q25, median, q75 = np.percentile(inside, [25, 50, 75])
            keep[label] = median > -935.0 or (q75 - q25 >= 50.0 and median > -975.0)
        else:
            keep[label] = gas_fraction[label - 1] < 0.3
    return keep[labels]


def _find_airways(coarse_hu: np.ndarray, body: np.ndarray, lungs: np.ndarray, coarse_mm: np.ndarray) -> np.ndarray:
    """Trachea and main bronchi on the coarse grid: a central air tube from above the lungs,
    grown with an adaptive threshold that stops before it leaks into the parenchyma."""
    empty = np.zeros_like(body)
    voxel_ml = float(np.prod(coarse_mm)) / 1000.0
    if lungs.sum() * voxel_ml < 300:  # no chest in this scan (abdomen, lung bases): no trachea
        return empty
    lung_slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    top, bottom = lung_slices.max(), lung_slices.min()
    # the trachea is a pure-air tube between the lungs, in the upper half of the chest or above
    gas = (coarse_hu < GAS_HU + 25) & body
    labels, count = ndi.label(gas)
    if count == 0:
        return empty
    lung_columns = np.flatnonzero(lungs.any(axis=(0, 1)))
    mid_left_right = 0.5 * (lung_columns.min() + lung_columns.max())
    half_width = 0.5 * (lung_columns.max() - lung_columns.min())
    upper_start = bottom + (top - bottom) // 2
    best_label, best_length = 0, 0
    objects = ndi.find_objects(labels)
    for label, box in enumerate(objects, start=1):
        if box is None:
            continue
        first, last = box[0].start, box[0].stop - 1
        length_mm = (last - first + 1) * coarse_mm[0]
        if last < upper_start or length_mm < 30:
            continue
        component = labels[box] == label
        upper = component[max(upper_start - first, 0):]
        areas = upper.sum(axis=(1, 2)) * coarse_mm[1] * coarse_mm[2]
        areas = areas[areas > 0]
        if areas.size == 0 or np.median(areas) > 800 or np.median(areas) < 50:  # 0.5..8 cm2 tube
            continue
        columns = np.nonzero(upper)[2] + box[2].start
        if abs(columns.mean() - mid_left_right) > 0.25 * half_width:
            continue
        if length_mm > best_length:
            best_label, best_length = label, length_mm
    if best_label == 0:
        return empty
    seed = labels == best_label
    # Adaptive threshold: raise it while the airway grows smoothly; a jump means it reached lung.
    airway = seed
    limit_voxels = 400.0 / voxel_ml
    for threshold in (-940.0, -920.0, -900.0, -880.0):
        grown_labels, _ = ndi.label((coarse_hu < threshold) & body)
        ids = np.unique(grown_labels[seed])
        grown = np.isin(grown_labels, ids[ids > 0])
        if grown.sum() > limit_voxels or grown.sum() > 2.0 * max(airway.sum(), 1):
            break
        airway = grown
    return airway


def _refine_airways(hu: np.ndarray, coarse_airway: np.ndarray, factors, shape) -> np.ndarray:
    """Full-resolution lumen: air core inside the coarse airway zone plus the half-air edge voxels
    one step out (the wall keeps the step from reaching the parenchyma)."""
    if not coarse_airway.any():
        return np.zeros(shape, dtype=bool)
    zone = _upsample(ndi.binary_dilation(coarse_airway), factors, shape)
    box = _bounding_box(zone)  # the airways are small: work in their box (speed)
    zone_box, hu_box = zone[box], hu[box]
    core = _largest_components(zone_box & (hu_box < AIRWAY_CORE_HU), min_fraction=0.05)
    edge = ndi.binary_dilation(core) & (hu_box < AIRWAY_EDGE_HU) & zone_box
    airways = np.zeros(shape, dtype=bool)
    airways[box] = core | edge
    return airways


def _dilate_in_box(mask: np.ndarray) -> np.ndarray:
    """One-voxel dilation of a small mask, computed in its padded bounding box (speed)."""
    box = _bounding_box(mask)
    out = np.zeros_like(mask)
    if box is None:
        return out
    padded = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, mask.shape, strict=True))
    out[padded] = ndi.binary_dilation(mask[padded])
    return out


def _patient_midline(body: np.ndarray, ras_x_of_column: np.ndarray) -> float:
    """Canonical column of the mid-sagittal plane: the body's centre, or the scanner's x = 0 (the
    table centre) when the field of view cuts the body at a side and its centre means nothing."""
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    truncated = columns.size == 0 or columns[0] == 0 or columns[-1] == body.shape[2] - 1
    if not truncated:
        return 0.5 * float(columns[0] + columns[-1])
    return float(np.argmin(np.abs(ras_x_of_column)))


def _split_left_right(lungs: np.ndarray, midline: float) -> tuple[np.ndarray, np.ndarray]:
    """Left lung = larger canonical column (patient left). Lungs that touch (anterior junction) are
    cut per slice at the least occupied column near the mid-sagittal plane."""
    labels, count = ndi.label(lungs)
    left = np.zeros_like(lungs)
    column_index = np.arange(lungs.shape[2])
    half_band = max(2, int(0.08 * lungs.shape[2]))
    band = slice(max(0, int(midline) - half_band), min(lungs.shape[2], int(midline) + half_band + 1))
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == label
        left_share = float(np.mean(np.nonzero(component)[2] + box[2].start > midline))
        if left_share > 0.9 or left_share < 0.1:
            if left_share > 0.5:
                left[box] |= component
            continue
        whole = np.zeros_like(lungs)
        whole[box] = component
        for k in np.flatnonzero(whole.any(axis=(1, 2))):
            window = whole[k].sum(axis=0)[band]
            cut = band.start + int(np.argmin(window)) if window.size else int(midline)
            left[k] |= whole[k] & (column_index > cut)[None, :]
    return left & lungs, lungs & ~left


def _refine_lungs(hu: np.ndarray, coarse_lungs: np.ndarray, factors, shape) -> np.ndarray:
    """Full-resolution lungs with their vessels: the coarse interior as is, the border by threshold."""
    if not coarse_lungs.any():
        return np.zeros(shape, dtype=bool)
    if factors == (1, 1, 1):
        return coarse_lungs
    interior = _upsample(ndi.binary_erosion(coarse_lungs, structure=_IN_PLANE), factors, shape)
    zone = _upsample(ndi.binary_dilation(coarse_lungs, structure=_IN_PLANE), factors, shape)
    return interior | (zone & (hu < LUNG_MAX_HU))


def _segment_bone(hu: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Bone by threshold with marrow filled inside cortical shells per slice.

    Old or thick-slice bone is faint (ribs ~200 HU, vertebral bodies ~150 HU), so the threshold is
    low and contrast blood (aorta, portal vein: 130-400 HU) and cartilage reach it too. They are
    told apart by texture: enhanced blood and cartilage are homogeneous (local SD ~ noise), while
    trabecular bone and cortex vary strongly from voxel to voxel.
    """
    bone = np.zeros_like(body)
    box = _bounding_box(body)  # all work inside the body's bounding box
    if box is None:
        return bone
    values = hu[box].astype(np.float32)
    inside = body[box]
    window = (1, BONE_TEXTURE_WINDOW, BONE_TEXTURE_WINDOW)
    local_mean = ndi.uniform_filter(values, window)
    local_sd = np.sqrt(np.maximum(ndi.uniform_filter(values * values, window) - local_mean**2, 0))
    homogeneous = (local_sd < HOMOGENEOUS_SD) & (local_mean > BONE_MIN_HU - 30) & (local_mean < CONTRAST_MAX_HU)
    # two in-plane steps also drop the blurred rim of a contrast-filled vessel
    candidate = (values > BONE_MIN_HU) & inside
    candidate &= ~ndi.binary_dilation(homogeneous, structure=_IN_PLANE, iterations=2)
    closed = ndi.binary_closing(candidate, structure=_IN_PLANE) | candidate  # seal 1-voxel cortex gaps
    filled = _fill_marrow(closed, values, spacing)
    labels, count = ndi.label(filled)
    if count == 0:
        return bone
    in_any = labels > 0  # statistics over the few bone-candidate voxels only (speed)
    ids, bone_values = labels[in_any], values[in_any].astype(np.float64)
    sizes = np.bincount(ids, minlength=count + 1)
    sums = np.bincount(ids, weights=bone_values, minlength=count + 1)
    squares = np.bincount(ids, weights=bone_values * bone_values, minlength=count + 1)
    means = sums / np.maximum(sizes, 1)
    sds = np.sqrt(np.maximum(squares / np.maximum(sizes, 1) - means**2, 0))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    # a bone piece is heterogeneous (SD >> noise) and not a speck
    keep = (sds > 40.0) & (sizes * voxel_ml >= 0.05)
    keep[0] = False
    kept = keep[labels]
    # edge by contrast: a rim voxel next to dense cortex is blur unless it is at least a third of the
    # way from soft tissue to that cortex (faint bone keeps its rim: the bar stays near threshold)
    rim_k, rim_j, rim_i = np.nonzero(kept & ~ndi.binary_erosion(kept, structure=_IN_PLANE))
    neighbour_max = values[rim_k, rim_j, rim_i]
    for dj, di in itertools.product((-1, 0, 1), repeat=2):  # 3x3 in-plane max at the rim only (speed)
        j = np.clip(rim_j + dj, 0, values.shape[1] - 1)
        i = np.clip(rim_i + di, 0, values.shape[2] - 1)
        np.maximum(neighbour_max, values[rim_k, j, i], out=neighbour_max)
    rim_value = values[rim_k, rim_j, rim_i]
    blur = rim_value < SOFT_TISSUE_HU + 0.35 * (neighbour_max - SOFT_TISSUE_HU)
    kept[rim_k[blur], rim_j[blur], rim_i[blur]] = False
    bone[box] = kept
    return bone


def _fill_marrow(shells: np.ndarray, values: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Fill the 2D holes of bone shells: small holes always (marrow, partial volume), large ones
    only when denser than soft tissue, so the spinal canal and a closed pelvic ring stay empty."""
    background, count = ndi.label(~shells, structure=_IN_PLANE)
    if count == 0:
        return shells
    outside = np.zeros(count + 1, dtype=bool)
    for face in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        outside[np.unique(face)] = True
    outside[0] = True
    enclosed = ~outside[background]
    ids = background[enclosed]  # statistics over the holes only (speed)
    sizes = np.bincount(ids, minlength=count + 1)
    means = np.bincount(ids, weights=values[enclosed], minlength=count + 1) / np.maximum(sizes, 1)
    areas_mm2 = sizes * spacing[1] * spacing[2]
    marrow = ~outside & ((areas_mm2 < 100.0) | (means > 60.0))
    filled = shells.copy()
    filled[enclosed] = marrow[ids]
    return filled


# ---------------------------------------------------------------------------------------------


def segment_classic_ct(
    hu: np.ndarray,
    ijk_to_ras: np.ndarray,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> ClassicCTMasks:
    """Body, left and right lung, airways and bone of a CT in HU, array order (k, j, i)."""
    cancel = cancel or CancelToken()
    perm, flips = _canonical_orientation(ijk_to_ras)
    spacing_kji = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]
    spacing = spacing_kji[list(perm)]
    volume = _to_canonical(np.asarray(hu), perm, flips)
    shape = volume.shape
    factors = tuple(max(1, int(round(COARSE_SPACING_MM / s))) for s in spacing)
    coarse_mm = spacing * np.array(factors)

    progress(0.0, "coarse grid")
    coarse = _block_mean(volume, factors)
    cancel.check("classic-ct")

    progress(0.1, "body")
    coarse_body = _segment_body(coarse, coarse_mm)
    body = _upsample(ndi.binary_erosion(coarse_body, structure=_IN_PLANE), factors, shape) | (
        _upsample(ndi.binary_dilation(coarse_body, structure=_IN_PLANE), factors, shape)
        & (volume > BODY_MIN_HU)
    )
    cancel.check("classic-ct")

    progress(0.3, "lungs")
    coarse_lungs = _lung_candidates(coarse, coarse_body, coarse_mm)
    cancel.check("classic-ct")

    progress(0.45, "airways")
    coarse_airways = _find_airways(coarse, coarse_body, coarse_lungs, coarse_mm)
    airways = _refine_airways(volume, coarse_airways, factors, shape)
    cancel.check("classic-ct")

    progress(0.55, "lungs")
    # vessels inside the lung count as lung (the references include them)
    # (hilar vessels are a few cm2; a heart ringed by touching lungs is not a vessel)
    max_vessel_voxels = LUNG_MAX_VESSEL_MM2 / (coarse_mm[1] * coarse_mm[2])
    coarse_lungs = _fill_holes_per_slice(coarse_lungs | coarse_airways, max_vessel_voxels) & ~coarse_airways
    lungs = _refine_lungs(volume, coarse_lungs, factors, shape) & ~_dilate_in_box(airways)
    ras_x_of_column = _ras_x_of_canonical_columns(ijk_to_ras, perm, flips, shape)
    lung_left, lung_right = _split_left_right(lungs, _patient_midline(body, ras_x_of_column))
    cancel.check("classic-ct")

    progress(0.7, "bone")
    bone = _segment_bone(volume, body, spacing)
    body |= lungs | airways | bone  # the body contains the rest, whatever the refinement did at edges
    cancel.check("classic-ct")
    progress(1.0, "done")

    def back(mask: np.ndarray) -> np.ndarray:
        return _from_canonical(mask.astype(bool, copy=False), perm, flips)

    return ClassicCTMasks(
        body=back(body), lung_left=back(lung_left), lung_right=back(lung_right),
        airways=back(airways), bone=back(bone),
    )
