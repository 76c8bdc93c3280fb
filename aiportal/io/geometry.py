"""Where the slices of a DICOM series lie, and a regular grid for tilted or unevenly spaced ones.

A volume needs one IJK→RAS matrix, but a gantry-tilted series has slices that shift in-plane
along the stack, and a series with missing slices or a change of spacing has no single slice
step. :class:`SliceStack` describes the slices as acquired (each at its own
ImagePositionPatient); :class:`RegularGrid` is the regular grid they are resampled onto by
default, as dcm2niix's tilt correction and Slicer's "acquisition geometry regularization" do:
the in-plane axes and pixel spacing as acquired, the slice axis perpendicular to the slices
(their cross product), the smallest acquired gap as slice spacing, an extent that holds every
acquired pixel, and linear interpolation between the true slice positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# Positions in DICOM files are decimal strings with ~6 significant digits.
POSITION_TOLERANCE_MM = 1e-3
# Spacing may vary this much (relative) before it is reported as non-uniform.
SPACING_RELATIVE_TOLERANCE = 1e-3
# Gaps that differ by less than this (relative) belong to one run of equal spacing.
_RUN_RELATIVE_TOLERANCE = 0.02
#: "regular": tilted or unevenly spaced series resampled onto a regular grid (the default);
#: "acquired": the slices as acquired.
Geometry = Literal["regular", "acquired"]
# An in-plane shift over the whole stack below this (pixels) is rounding, not a tilt.
_TILT_TOLERANCE_VOXELS = 0.05
# Resampling is skipped when no slice is off the mean-spacing stack by more than this (voxels).
_RESAMPLE_TOLERANCE_VOXELS = 0.01


@dataclass(frozen=True)
class SliceStack:
    """The acquired slices, sorted along the normal: positions (LPS mm) and the in-plane axes."""

    positions: np.ndarray  # (n, 3) ImagePositionPatient of each slice, LPS
    row_cosine: np.ndarray  # direction of increasing column index (i), LPS
    column_cosine: np.ndarray  # direction of increasing row index (j), LPS
    pixel_spacing: tuple[float, float]  # (between columns along i, between rows along j) in mm
    rows: int
    columns: int
    header_tilt_degrees: float | None = None  # GantryDetectorTilt, when the header has it

    @property
    def normal(self) -> np.ndarray:
        normal = np.cross(self.row_cosine, self.column_cosine)
        return normal / np.linalg.norm(normal)

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def distances(self) -> np.ndarray:
        """Each slice's distance along the normal from the first slice (mm)."""
        return (self.positions - self.positions[0]) @ self.normal

    @property
    def steps(self) -> np.ndarray:
        return np.diff(self.distances)

    @property
    def in_plane_offsets(self) -> np.ndarray:
        """(n, 2): each slice's shift from the first along (row_cosine, column_cosine), mm."""
        offsets = self.positions - self.positions[0]
        return np.stack([offsets @ self.row_cosine, offsets @ self.column_cosine], axis=1)

    @property
    def in_plane_shift_mm(self) -> float:
        return float(np.max(np.linalg.norm(self.in_plane_offsets, axis=1))) if self.count > 1 else 0.0

    @property
    def is_tilted(self) -> bool:
        """Slices shift in-plane along the stack by more than rounding and a twentieth of a pixel."""
        tolerance = max(POSITION_TOLERANCE_MM * self.count, _TILT_TOLERANCE_VOXELS * min(self.pixel_spacing))
        return self.count > 1 and self.in_plane_shift_mm > tolerance

    @property
    def is_uniform(self) -> bool:
        if self.count < 3:
            return True
        steps = self.steps
        return float(steps.max() - steps.min()) <= SPACING_RELATIVE_TOLERANCE * float(steps.mean())

    @property
    def tilt_degrees(self) -> float:
        """The gantry tilt: signed as GantryDetectorTilt when the header's value agrees with the
        angle the slice positions show, else the angle from the positions (unsigned)."""
        if self.count < 2:
            return 0.0
        extent = float(self.distances[-1])
        measured = math.degrees(math.atan2(float(np.linalg.norm(self.in_plane_offsets[-1])), extent))
        header = self.header_tilt_degrees
        if header is not None and abs(abs(header) - measured) < 0.5:
            return header
        return measured

    def acquired_ijk_to_lps(self) -> np.ndarray:
        """The slices as acquired: the k axis is the mean step between slice positions, so a
        uniformly spaced tilted stack has every voxel where it was acquired (a non-orthogonal
        matrix, not a shear); unevenly spaced stacks are only approximated (see :meth:`misplacement_mm`)."""
        matrix = np.eye(4)
        matrix[:3, 0] = self.row_cosine * self.pixel_spacing[0]
        matrix[:3, 1] = self.column_cosine * self.pixel_spacing[1]
        matrix[:3, 2] = self._mean_step() if self.is_tilted else self.normal * float(self.distances[-1]) / max(
            1, self.count - 1)
        matrix[:3, 3] = self.positions[0]
        return matrix

    def _mean_step(self) -> np.ndarray:
        if self.count < 2:
            return self.normal
        return (self.positions[-1] - self.positions[0]) / (self.count - 1)

    def misplacement_mm(self) -> float:
        """How far the mean step puts a slice from its own ImagePositionPatient, at worst."""
        if self.count < 2:
            return 0.0
        placed = self.positions[0] + np.outer(np.arange(self.count), self._mean_step())
        return float(np.max(np.linalg.norm(placed - self.positions, axis=1)))

    def needs_regular_grid(self) -> bool:
        """Whether the acquired slices are off any orthogonal regular grid (tilt or uneven spacing)."""
        if self.count < 2:
            return False
        smallest = min(self.pixel_spacing + (float(self.steps.min()),))
        return (self.is_tilted or not self.is_uniform) and (
            self.misplacement_mm() > _RESAMPLE_TOLERANCE_VOXELS * smallest or self.is_tilted)


@dataclass(frozen=True)
class RegularGrid:
    """The regular grid of a :class:`SliceStack`: orthogonal, covering every acquired pixel."""

    ijk_to_lps: np.ndarray  # 4x4, orthogonal columns
    shape: tuple[int, int, int]  # (k, j, i)
    slice_spacing: float
    # per acquired slice: its place in grid index units (k, j offset, i offset)
    acquired_k: np.ndarray
    acquired_offsets_ji: np.ndarray  # (n, 2)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(i, j, k) spacing in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_lps[:3, :3], axis=0))


def regular_grid(stack: SliceStack, slice_spacing: float | None = None) -> RegularGrid:
    """The grid the stack is resampled onto: in-plane axes and spacing as acquired, the slice axis
    along the normal with ``slice_spacing`` (default: the smallest acquired gap), shrunk so that the
    grid ends exactly on the last slice, and rows/columns added to hold the in-plane shift of a tilt."""
    distances = stack.distances
    extent = float(distances[-1])
    wanted = float(slice_spacing) if slice_spacing else float(stack.steps.min())
    intervals = max(1, math.ceil(extent / wanted - 1e-3))
    spacing = extent / intervals
    column_spacing, row_spacing = stack.pixel_spacing
    offsets = stack.in_plane_offsets  # mm along (row_cosine, column_cosine)
    low = offsets.min(axis=0)
    span = offsets.max(axis=0) - low
    extra_i = math.ceil(span[0] / column_spacing - 1e-3)
    extra_j = math.ceil(span[1] / row_spacing - 1e-3)
    matrix = np.eye(4)
    matrix[:3, 0] = stack.row_cosine * column_spacing
    matrix[:3, 1] = stack.column_cosine * row_spacing
    matrix[:3, 2] = stack.normal * spacing
    matrix[:3, 3] = stack.positions[0] + low[0] * stack.row_cosine + low[1] * stack.column_cosine
    acquired_offsets = np.stack([(offsets[:, 1] - low[1]) / row_spacing, (offsets[:, 0] - low[0]) / column_spacing],
                                axis=1)
    return RegularGrid(ijk_to_lps=matrix, shape=(intervals + 1, stack.rows + extra_j, stack.columns + extra_i),
                       slice_spacing=spacing, acquired_k=distances / spacing, acquired_offsets_ji=acquired_offsets)


def _placed(slice_2d: np.ndarray, offset_ji: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    """An acquired slice on the grid's in-plane raster: shifted by its (non-negative) offset, bilinear,
    ``fill`` outside. A pure shift, so two blends of shifted views (much faster than a general resampler)."""
    (j0, i0), (fj, fi) = np.divmod(np.asarray(offset_ji, dtype=float), 1.0)
    padded = np.pad(slice_2d.astype(np.float32), 1, constant_values=fill)
    rows = (1.0 - fj) * padded[1:] + fj * padded[:-1]  # row t: input rows t and t-1
    both = (1.0 - fi) * rows[:, 1:] + fi * rows[:, :-1]  # (rows+1, columns+1), from output (j0, i0) on
    out = np.full(shape, fill, dtype=np.float32)
    j0, i0 = int(j0), int(i0)
    height, width = min(both.shape[0], shape[0] - j0), min(both.shape[1], shape[1] - i0)
    out[j0:j0 + height, i0:i0 + width] = both[:height, :width]
    return out


def resample_to_grid(array: np.ndarray, grid: RegularGrid, fill: float) -> np.ndarray:
    """The acquired slices (array axis 0 in stack order) on ``grid``: each grid slice linearly
    interpolated along the normal between the two acquired slices around it, each of them at its
    own position. Integer input stays integer (rounded)."""
    k_grid = np.arange(grid.shape[0], dtype=float)
    acquired = grid.acquired_k
    upper = np.clip(np.searchsorted(acquired, k_grid - 1e-6), 1, len(acquired) - 1)
    out = np.empty(grid.shape, dtype=array.dtype)
    cache: dict[int, np.ndarray] = {}
    plane = grid.shape[1:]
    for k, above in enumerate(upper):
        below = above - 1
        weight = float(np.clip((k - acquired[below]) / (acquired[above] - acquired[below]), 0.0, 1.0))
        for index in (below, above):
            if index not in cache:
                cache[index] = _placed(array[index], grid.acquired_offsets_ji[index], plane, fill)
        for index in [i for i in cache if i < below]:  # the stack is walked in order: drop what is passed
            del cache[index]
        if weight < 1e-6 or weight > 1 - 1e-6:  # on an acquired slice (always, for uniform tilted stacks)
            value = cache[above if weight > 0.5 else below]
        else:
            value = cache[below] * (1.0 - weight) + cache[above] * weight
        out[k] = np.rint(value) if np.issubdtype(array.dtype, np.integer) else value
    return out


def labels_to_acquired(labels: np.ndarray, grid: RegularGrid, rows: int, columns: int) -> np.ndarray:
    """Labels on ``grid`` (k, j, i[, ...]) back on the acquired slices (nearest neighbour): frame n is
    the grid's labels at the pixels of acquired slice n, so a DICOM SEG can reference that slice."""
    out = np.zeros((len(grid.acquired_k), rows, columns, *labels.shape[3:]), dtype=labels.dtype)
    j, i = np.arange(rows), np.arange(columns)
    for n, (k, (dj, di)) in enumerate(zip(grid.acquired_k, grid.acquired_offsets_ji, strict=True)):
        kk = int(np.clip(np.rint(k), 0, grid.shape[0] - 1))
        jj = np.clip(np.rint(j + dj).astype(int), 0, grid.shape[1] - 1)
        ii = np.clip(np.rint(i + di).astype(int), 0, grid.shape[2] - 1)
        out[n] = labels[kk][np.ix_(jj, ii)]
    return out


def interpolated_gaps(stack: SliceStack, grid: RegularGrid) -> tuple[int, float]:
    """How many grid slices lie inside gaps wider than 1.5 grid spacings (no acquired slice near
    them), and the widest such gap in mm."""
    wide = np.flatnonzero(stack.steps > 1.5 * grid.slice_spacing + POSITION_TOLERANCE_MM)
    if not wide.size:
        return 0, 0.0
    inside = sum(max(0, math.ceil(grid.acquired_k[i + 1] - 1e-6) - math.floor(grid.acquired_k[i] + 1e-6) - 1)
                 for i in wide)
    return int(inside), float(stack.steps[wide].max())


# ---------------------------------------------------------------------------------------------
# Describing the spacing


@dataclass(frozen=True)
class _Run:
    spacing: float
    first: int  # index of the first step (step s lies between slices s+1 and s+2, 1-based)
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def slices(self) -> str:
        return f"{self.first + 1}–{self.last + 2}"


def _runs(steps: np.ndarray) -> list[_Run]:
    runs: list[_Run] = []
    start = 0
    for index in range(1, len(steps) + 1):
        if index == len(steps) or abs(steps[index] - steps[start]) > _RUN_RELATIVE_TOLERANCE * steps[start] + 0.01:
            runs.append(_Run(float(np.mean(steps[start:index])), start, index - 1))
            start = index
    return runs


def _multiple(gap: float, spacing: float) -> int:
    """n when ``gap`` is n >= 2 times ``spacing`` (within 5 %), else 0."""
    ratio = gap / spacing
    return round(ratio) if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.05 * ratio else 0


def describe_spacing(steps: np.ndarray) -> list[str]:
    """Sentences that say how the slice gaps deviate from one spacing: slices missing (a gap that is
    a whole multiple of the spacing around it), a change of spacing ("4 mm between slices 1–20,
    then 7 mm between slices 20–34"), or irregular spacing. Empty for uniform spacing."""
    if len(steps) < 2 or float(steps.max() - steps.min()) <= SPACING_RELATIVE_TOLERANCE * float(steps.mean()):
        return []
    runs = _runs(steps)
    missing: list[tuple[_Run, int, float]] = []
    kept: list[_Run] = []
    for index, run in enumerate(runs):
        neighbours = [runs[i].spacing for i in (index - 1, index + 1) if 0 <= i < len(runs)]
        around = [n for n in neighbours if _multiple(run.spacing, n)]
        if run.length <= 2 and around and all(abs(n - around[0]) <= _RUN_RELATIVE_TOLERANCE * n for n in neighbours):
            missing.append((run, _multiple(run.spacing, around[0]) - 1, around[0]))
        else:
            kept.append(run)
    sentences = []
    if missing:
        count = sum(each * run.length for run, each, _ in missing)
        gaps = "; ".join(
            f"{run.spacing:.4g} mm between slices {run.first + 1} and {run.first + 2}"
            + (f" (and the next {run.length - 1})" if run.length > 1 else "")
            + f" where the spacing is {usual:.4g} mm" for run, _, usual in missing[:5])
        more = f"; and {len(missing) - 5} more gaps" if len(missing) > 5 else ""
        sentences.append(f"Missing slices: about {count} slice(s) missing in {sum(r.length for r, _, _ in missing)} "
                         f"gap(s): {gaps}{more}")
    merged = _merge_equal(kept)
    if len(merged) > 1:
        if len(merged) <= 4 and all(run.length >= 2 for run in merged):
            changes = ", then ".join(f"{run.spacing:.4g} mm between slices {run.slices()}" for run in merged)
            sentences.append(f"Slice spacing changes: {changes}")
        else:
            sentences.append(
                f"Irregular slice spacing: {len(runs)} runs of different gaps from {float(steps.min()):.3g} to "
                f"{float(steps.max()):.3g} mm (median {float(np.median(steps)):.3g} mm)")
    return sentences


def _merge_equal(runs: list[_Run]) -> list[_Run]:
    """Runs of the same spacing that were split only by missing-slice gaps, joined again."""
    merged: list[_Run] = []
    for run in runs:
        if merged and abs(merged[-1].spacing - run.spacing) <= _RUN_RELATIVE_TOLERANCE * run.spacing:
            merged[-1] = _Run(merged[-1].spacing, merged[-1].first, run.last)
        else:
            merged.append(run)
    return merged


# ---------------------------------------------------------------------------------------------
# Placing the voxels


@dataclass
class PlacedVolume:
    """Voxels and IJK→LPS on the chosen geometry, the grid when resampled, notes and a summary."""

    array: np.ndarray
    ijk_to_lps: np.ndarray
    grid: RegularGrid | None
    notes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # which grid the voxels are on, for run records


def place_on_grid(stack: SliceStack, array: np.ndarray, geometry: Geometry = "regular",
                  slice_spacing: float | None = None, single_slice_spacing: float = 1.0) -> PlacedVolume:
    """The acquired slices (``array`` in stack order) as a volume on the chosen geometry.

    Uniform untilted stacks are used as they are. Tilted or unevenly spaced ones go onto
    :func:`regular_grid` by default, or, with ``geometry="acquired"``, stay as acquired with the
    mean slice step (exact for uniform spacing; for uneven spacing the note says it is not fit to
    measure on)."""
    notes = describe_spacing(stack.steps) if stack.count > 2 else []
    summary: dict = {"acquired_slices": stack.count, "uniform_spacing": stack.is_uniform,
                     "tilt_degrees": round(stack.tilt_degrees, 3) if stack.is_tilted else 0.0}
    if stack.count > 1:
        summary["acquired_gaps_mm"] = [round(float(stack.steps.min()), 4), round(float(stack.steps.max()), 4)]
    tilted = f"{stack.count} tilted slices at {stack.tilt_degrees:.1f}°" if stack.is_tilted else ""
    if stack.count < 2 or not stack.needs_regular_grid():
        matrix = stack.acquired_ijk_to_lps()
        if stack.count < 2:
            matrix[:3, 2] = stack.normal * single_slice_spacing
        return PlacedVolume(array, matrix, None, notes, summary | {"grid": "acquired", "resampled": False})
    if geometry == "acquired":
        if stack.is_uniform:
            notes.append(
                f"Acquired geometry (as requested): {tilted} kept as acquired on a non-orthogonal grid (each voxel "
                "where it was acquired; tools that assume orthogonal axes may show it sheared)")
        else:
            notes.append(
                f"Acquired geometry (as requested): {stack.count} {'tilted ' if stack.is_tilted else ''}unevenly "
                f"spaced slices stacked at the mean step, so some are shown up to {stack.misplacement_mm():.3g} mm "
                "from where they were acquired: volumes, distances and statistics measured on it are wrong — load "
                "without --acquired-geometry (the default regular grid) to measure")
        return PlacedVolume(array, stack.acquired_ijk_to_lps(), None, notes, summary | {
            "grid": "acquired", "resampled": False, "measurable": stack.is_uniform})
    grid = regular_grid(stack, slice_spacing)
    resampled = resample_to_grid(array, grid, fill=float(array.min()))
    what = tilted or f"{stack.count} unevenly spaced slices"
    k, j, i = grid.shape
    spacing = grid.spacing
    notes.append(
        f"Resampled from {what} onto a regular grid: {i}x{j}x{k} voxels of {spacing[0]:.4g}x{spacing[1]:.4g}x"
        f"{spacing[2]:.4g} mm, slice axis perpendicular to the slices, linear interpolation between the acquired "
        "slice positions; measurements and exports are on this grid (DICOM SEG frames are mapped back onto the "
        "acquired slices); the slices as acquired: --acquired-geometry")
    inside, widest = interpolated_gaps(stack, grid)
    if inside:
        notes.append(
            f"{inside} of the {k} slices of the regular grid lie in gaps with no acquired slice (widest "
            f"{widest:.4g} mm) and are interpolated, not imaged: anatomy there is estimated")
    return PlacedVolume(resampled, grid.ijk_to_lps, grid, notes, summary | {
        "grid": "regular", "resampled": True, "shape_ijk": [i, j, k], "spacing_mm": [round(v, 4) for v in spacing],
        "interpolated_slices_in_gaps": inside})
