"""RECIST 1.1 axes of a segment, measured exactly on its voxels, and placed as Markups lines.

Definitions (all distances between voxel centres, in RAS millimetres):

- **Axial slices** are the planes of constant index along the voxel axis whose slice plane is closest
  to perpendicular to the patient's superior axis. When that plane is tilted more than 1° from true
  axial the measurement is still made in the acquired slices and ``notes`` says so.
- **Boundary** voxels of a slice are the segment's voxels with an in-plane face neighbour outside it.
  The convex hull of a slice's voxel centres has only boundary voxels as vertices, so the longest
  distance on the hull vertices is exact.
- **Long axis**: the longest distance between two boundary voxel centres of one slice, over all
  slices. Slices tied within 1 µm are broken by the longer short axis, then the lower index.
- **Short axis** (on the long-axis slice): the longest distance measured perpendicular to the long
  axis between two boundary voxel centres whose positions along the long axis differ by at most one
  in-plane voxel (the larger in-plane spacing). Its endpoints are those two centres, each moved along
  the long axis (by at most half a voxel) onto their common perpendicular line, so the reported short
  axis is exactly perpendicular to the long axis. As with a reader's caliper, it may cross outside a
  non-convex lesion.
- **Maximum 3D diameter**: the longest distance between any two voxel centres (as the Feret diameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from aiportal import terminology
from aiportal.errors import InputError
from aiportal.export.statistics import clip_to_volume, crop_from_mask, extreme_points, max_pairwise_distance
from aiportal.io.volumes import ijk_to_ras_matrix
from aiportal.measure.lesions import (
    CONNECTIVITY,
    DEFAULT_MIN_LESION_MM3,
    split_components,
    tubularity,
    vessel_terminology,
)
from aiportal.provenance import TAG_PREFIX
from aiportal.segmentation import layer_on_grid, segment_ids, segment_mask, segment_voxel_counts, shape_kji

SEGMENTATION_ID_ATTRIBUTE = TAG_PREFIX + "SegmentationID"
SEGMENT_ID_ATTRIBUTE = TAG_PREFIX + "SegmentID"
MEASUREMENT_ATTRIBUTE = TAG_PREFIX + "Measurement"
LESION_ATTRIBUTE = TAG_PREFIX + "Lesion"
VESSELS_FIX = "RECIST measures lesions, not vessels or other tubes: for a vessel use aiportal measure --vessels {name}"

OBLIQUE_TOLERANCE_DEG = 1.0
_TIE_MM = 1e-6
_AXIS_NAMES = "ijk"


@dataclass
class RecistMeasurement:
    segment_id: str
    segment_name: str
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints_ras: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_endpoints_ras: tuple[tuple[float, float, float], tuple[float, float, float]]
    slice_axis: str  # voxel axis ("i", "j" or "k") whose index is constant on the axial slices
    slice_index: int  # index along slice_axis of the slice holding both axes
    max_3d_diameter_mm: float
    volume_ml: float
    lymph_node: bool = False
    notes: list[str] = field(default_factory=list)
    lesion_name: str = ""  # the segment's name, or "<segment> lesion N" when the segment holds several
    lesion_index: int = 1  # N: lesions of a segment are numbered largest first
    lesions_in_segment: int = 1
    speckle_dropped: int = 0  # the segment's components under the minimum lesion size, not measured

    def __post_init__(self) -> None:
        self.lesion_name = self.lesion_name or self.segment_name

    @property
    def reported_mm(self) -> float:
        """The RECIST diameter of this lesion: short axis for a lymph node, long axis otherwise."""
        return self.short_axis_mm if self.lymph_node else self.long_axis_mm


@dataclass
class SliceAxes:
    """The exact RECIST long and short axes of a segment on one axial slice (``measure_segment``'s rules)."""

    slice_axis: str
    slice_index: int
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints_ras: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_endpoints_ras: tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass
class _LesionSlices:
    """A segment's in-plane boundary voxel centres (RAS) per axial slice, and the slice geometry."""

    label: str  # names the segment in messages
    segment_name: str
    linear: np.ndarray
    axis: int
    normal: np.ndarray
    tilt_deg: float
    in_plane_voxel_mm: float
    ras: dict[int, np.ndarray]
    count: int  # voxels inside the volume
    total: int  # voxels wherever they lie


@dataclass
class _SegmentCrop:
    """A segment's voxels inside the volume, cropped to their bounding box."""

    label: str  # names the segment in messages
    segment_name: str
    type_meaning: str | None  # its SNOMED type, when it has a terminology
    linear: np.ndarray
    translation: np.ndarray
    mask: np.ndarray
    origin: np.ndarray  # (k, j, i) of mask[0, 0, 0]
    total: int  # voxels wherever they lie


def _segment_crop_checked(segmentation_node, segment_id: str, volume_node) -> _SegmentCrop:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(
            f"Segment {segment_id!r} is not in {segmentation_node.GetName()}",
            f"use one of: {', '.join(segment_ids(segmentation_node)) or 'none (the segmentation is empty)'}",
        )
    label = f"Segment {segment.GetName()!r} ({segment_id}) of {segmentation_node.GetName()}"
    if segmentation_node.GetParentTransformNode() or volume_node.GetParentTransformNode():
        raise InputError(f"{segmentation_node.GetName()} or {volume_node.GetName()} is transformed",
                         "harden the transforms (Data module) before measuring")
    ijk_to_ras = ijk_to_ras_matrix(volume_node)
    crop, total = _segment_crop(segmentation_node, segment_id, volume_node, ijk_to_ras)
    if total == 0:
        raise InputError(f"{label} is empty", "paint the lesion (or pick another segment) before measuring")
    if crop is None:
        raise InputError(f"{label} lies entirely outside {volume_node.GetName()}",
                         "measure it on the image it was drawn on")
    codes = terminology.deserialize(segment.GetTerminology())
    return _SegmentCrop(label, segment.GetName(), codes.type.meaning if codes else None, ijk_to_ras[:3, :3],
                        ijk_to_ras[:3, 3], crop[0], crop[1], total)


def _slices_of(crop: _SegmentCrop, mask: np.ndarray, volume_node, label: str, total: int) -> _LesionSlices:
    """The in-plane boundaries per axial slice of ``mask`` (a part of ``crop``, on its box)."""
    count = int(np.count_nonzero(mask))
    if count == 1:
        raise InputError(f"{label} is a single voxel: it has no diameter", "segment the whole lesion")
    axis, normal, tilt_deg = axial_slices(volume_node)
    spacing = np.linalg.norm(crop.linear, axis=0)
    slices = _slice_boundaries(mask, crop.origin, 2 - axis)  # slice index -> boundary voxel indices (k, j, i)
    return _LesionSlices(
        label=label, segment_name=crop.segment_name, linear=crop.linear, axis=axis, normal=normal,
        tilt_deg=tilt_deg, in_plane_voxel_mm=float(max(spacing[a] for a in range(3) if a != axis)),
        ras={index: kji[:, ::-1] @ crop.linear.T + crop.translation for index, kji in slices.items()},
        count=count, total=total,
    )


def _lesion_slices(segmentation_node, segment_id: str, volume_node, lesion_index: int | None = None) -> _LesionSlices:
    """The whole segment's slices, or those of its lesion ``lesion_index`` (numbered as :func:`measure_lesions`)."""
    crop = _segment_crop_checked(segmentation_node, segment_id, volume_node)
    if lesion_index is None:
        return _slices_of(crop, crop.mask, volume_node, crop.label, crop.total)
    components = split_components(crop.mask, abs(float(np.linalg.det(crop.linear))))
    if not 1 <= lesion_index <= components.count:
        raise InputError(f"{crop.label} has no lesion {lesion_index}", f"it has {components.count} lesion(s)")
    mask = components.labels == lesion_index
    return _slices_of(crop, mask, volume_node, f"{crop.label}, lesion {lesion_index}", int(mask.sum()))


def axial_slices(volume_node) -> tuple[int, np.ndarray, float]:
    """The voxel axis (0=i, 1=j, 2=k) along which ``volume_node``'s axial slices are stacked, their unit
    normal (RAS) and their tilt from true axial in degrees."""
    return _axial_axis(ijk_to_ras_matrix(volume_node)[:3, :3])


def lesion_slice_indices(segmentation_node, segment_id: str, volume_node, lesion_index: int | None = None) -> list[int]:
    """The axial slices (indices along the slice axis) that hold the segment (or its lesion ``lesion_index``)."""
    return sorted(_lesion_slices(segmentation_node, segment_id, volume_node, lesion_index).ras)


def axes_on_slice(segmentation_node, segment_id: str, volume_node, slice_index: int,
                  lesion_index: int | None = None) -> SliceAxes:
    """Exact RECIST long and short axes of the segment (or its lesion ``lesion_index``) on one axial slice
    (lengths 0 where it is one voxel)."""
    lesion = _lesion_slices(segmentation_node, segment_id, volume_node, lesion_index)
    if slice_index not in lesion.ras:
        raise InputError(f"{lesion.label} is not on slice {_AXIS_NAMES[lesion.axis]}={slice_index}",
                         f"it is on slices {min(lesion.ras)} to {max(lesion.ras)}")
    points = lesion.ras[slice_index]
    p, q, length = _farthest_pair(extreme_points(points))
    a, b, short_mm = (p, q, 0.0) if length == 0.0 else _short_axis(points, p, q, lesion.normal,
                                                                    lesion.in_plane_voxel_mm)
    return SliceAxes(_AXIS_NAMES[lesion.axis], int(slice_index), float(length), float(short_mm),
                     (_point(p), _point(q)), (_point(a), _point(b)))


def measure_segment(segmentation_node, segment_id: str, volume_node, *, lymph_node: bool = False) -> RecistMeasurement:
    """RECIST 1.1 long and short axes, maximum 3D diameter and volume of a whole segment on ``volume_node``'s
    grid, as one lesion (:func:`measure_lesions` measures each of its separate lesions)."""
    return _measure(_lesion_slices(segmentation_node, segment_id, volume_node), segment_id, volume_node, lymph_node)


def _measure(lesion: _LesionSlices, segment_id: str, volume_node, lymph_node: bool) -> RecistMeasurement:
    label, ras = lesion.label, lesion.ras
    hulls = {index: extreme_points(points) for index, points in ras.items()}
    longest = {index: _farthest_pair(hull) for index, hull in hulls.items()}
    long_mm = max(pair[2] for pair in longest.values())
    if long_mm == 0.0:
        raise InputError(f"{label} is one voxel wide in every axial slice: it has no axial diameter",
                         "segment the whole lesion")

    best = None
    for index in sorted(index for index, pair in longest.items() if pair[2] >= long_mm - _TIE_MM):
        p, q, length = longest[index]
        short = _short_axis(ras[index], p, q, lesion.normal, lesion.in_plane_voxel_mm)
        if best is None or short[2] > best[2][2] + _TIE_MM:
            best = (index, (p, q, length), short)
    index, (p, q, length), (a, b, short_mm) = best

    notes = []
    if lesion.tilt_deg > OBLIQUE_TOLERANCE_DEG:
        notes.append(f"slices are oblique: {lesion.tilt_deg:.1f}° from axial; axes are measured in the acquired "
                     "slices")
    if lesion.count < lesion.total:
        notes.append(f"{lesion.total - lesion.count} of {lesion.total} voxels lie outside {volume_node.GetName()}: "
                     "only the part inside is measured")
    notes.append(_measurability(length, short_mm, lymph_node))
    every_hull = np.concatenate(list(hulls.values()))
    return RecistMeasurement(
        segment_id=segment_id,
        segment_name=lesion.segment_name,
        long_axis_mm=float(length),
        short_axis_mm=float(short_mm),
        long_axis_endpoints_ras=(_point(p), _point(q)),
        short_axis_endpoints_ras=(_point(a), _point(b)),
        slice_axis=_AXIS_NAMES[lesion.axis],
        slice_index=int(index),
        # the hull of all slices' hull vertices is the hull of the whole segment: its Feret diameter
        max_3d_diameter_mm=max_pairwise_distance(extreme_points(every_hull)),
        volume_ml=float(lesion.count * abs(np.linalg.det(lesion.linear)) / 1000.0),
        lymph_node=lymph_node,
        notes=notes,
    )


@dataclass
class SegmentLesions:
    """The separate lesions of one segment: measured, or refused with the reason."""

    measurements: list[RecistMeasurement]
    refused: dict[str, str]  # lesion (or segment) name -> why it is not measured
    speckle_dropped: int = 0


def measure_lesions(segmentation_node, segment_id: str, volume_node, *, lymph_node: bool = False,
                    min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3) -> SegmentLesions:
    """RECIST 1.1 axes of each separate lesion of a segment (its 26-connected components of at least
    ``min_lesion_mm3``; smaller ones are speckle, counted and dropped). A vessel is refused: by its
    terminology, or any lesion whose shape is tubular (:mod:`aiportal.measure.lesions`)."""
    crop = _segment_crop_checked(segmentation_node, segment_id, volume_node)
    fix = VESSELS_FIX.format(name=crop.segment_name)
    if vessel_terminology(crop.type_meaning):
        return SegmentLesions([], {crop.segment_name: f"{crop.label} is coded as a vessel ({crop.type_meaning}) "
                                                      f"— {fix}"})
    voxel_mm3 = abs(float(np.linalg.det(crop.linear)))
    components = split_components(crop.mask, voxel_mm3, min_lesion_mm3)
    speckle = (f"{components.dropped} speckle component(s) under {min_lesion_mm3:.3g} mm³ or of one voxel "
               f"({components.dropped_voxels} voxels) dropped") if components.dropped else ""
    if components.count == 0:
        return SegmentLesions([], {crop.segment_name: f"{crop.label} holds only {speckle}: no lesion of at least "
                                                      f"{min_lesion_mm3:.3g} mm³ — lower --min-lesion-mm3"},
                              components.dropped)
    inside = int(np.count_nonzero(crop.mask))
    measured, refused = [], {}
    for index in range(1, components.count + 1):
        several = components.count > 1
        name = f"{crop.segment_name} lesion {index}" if several else crop.segment_name
        label = f"{crop.label}, lesion {index} of {components.count}" if several else crop.label
        mask = components.labels == index
        shape = tubularity(mask, crop.linear)
        if shape.tubular:
            refused[name] = f"{label} is tubular: {shape.describe()} — {fix}"
            continue
        try:
            measurement = _measure(_slices_of(crop, mask, volume_node, label, components.sizes[index - 1]),
                                   segment_id, volume_node, lymph_node)
        except InputError as error:
            refused[name] = str(error)
            continue
        if inside < crop.total:
            measurement.notes.insert(0, f"{crop.total - inside} of {crop.total} voxels of the segment lie outside "
                                        f"{volume_node.GetName()}: only the part inside is measured")
        if several:
            measurement.notes.insert(0, f"lesion {index} of {components.count} separate lesions ({CONNECTIVITY}-"
                                        f"connected) in segment {crop.segment_name}")
        if speckle:
            measurement.notes.append(speckle)
        measurement.lesion_name, measurement.lesion_index = name, index
        measurement.lesions_in_segment, measurement.speckle_dropped = components.count, components.dropped
        measured.append(measurement)
    return SegmentLesions(measured, refused, components.dropped)


def lesion_masks(segmentation_node, segment_id: str, volume_node,
                 min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3) -> list[np.ndarray]:
    """The masks of a segment's lesions on ``volume_node``'s grid, numbered as :func:`measure_lesions` does."""
    mask = segment_mask(segmentation_node, segment_id, volume_node)
    components = split_components(mask, abs(float(np.linalg.det(ijk_to_ras_matrix(volume_node)[:3, :3]))),
                                  min_lesion_mm3)
    return [components.labels == index for index in range(1, components.count + 1)]


def add_axis_lines(scene, measurement: RecistMeasurement, segmentation_node, segment_id: str | None = None,
                   name_prefix: str | None = None):
    """Two Markups line nodes at the measured axes, named "<prefix> long axis" / "<prefix> short axis"
    (prefix: the lesion's name, e.g. "liver lesion 2") and linked to the segment by node attributes."""
    segment_id = segment_id or measurement.segment_id
    prefix = name_prefix or measurement.lesion_name
    lines = []
    for kind, endpoints in (("long", measurement.long_axis_endpoints_ras),
                            ("short", measurement.short_axis_endpoints_ras)):
        line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{prefix} {kind} axis")
        line.CreateDefaultDisplayNodes()
        for point in endpoints:
            line.AddControlPointWorld(*point)
        line.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, segmentation_node.GetID())
        line.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
        line.SetAttribute(MEASUREMENT_ATTRIBUTE, f"RECIST {kind} axis")
        line.SetAttribute(LESION_ATTRIBUTE, str(measurement.lesion_index))
        lines.append(line)
    return lines[0], lines[1]


# -- geometry ------------------------------------------------------------------------------------
def _segment_crop(
    segmentation_node, segment_id: str, volume_node, ijk_to_ras: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray] | None, int]:
    """The segment cropped to its bounding box inside the volume (mask, origin (k, j, i)), or None
    when no voxel of it is inside; and its voxel count wherever it lies."""
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    layer = layer_on_grid(image, ijk_to_ras) if image is not None else None
    if layer is None:  # another grid (or no voxels): let Slicer resample the segment onto the volume's grid
        total = segment_voxel_counts(segmentation_node)[segment_id]
        return crop_from_mask(segment_mask(segmentation_node, segment_id, volume_node)), total
    value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    crop = crop_from_mask(layer.array == value)
    if crop is None:
        return None, 0
    mask, origin = crop
    inside = clip_to_volume(mask, origin + layer.offset_kji, shape_kji(volume_node))
    if inside is not None and not inside[0].any():
        inside = None
    return inside, int(np.count_nonzero(mask))


def _axial_axis(linear: np.ndarray) -> tuple[int, np.ndarray, float]:
    """The voxel axis (0=i, 1=j, 2=k) whose slices are closest to axial, their unit normal, and
    their tilt from axial in degrees."""
    normals = np.array([np.cross(linear[:, (a + 1) % 3], linear[:, (a + 2) % 3]) for a in range(3)])
    normals /= np.linalg.norm(normals, axis=1)[:, None]
    axis = int(np.abs(normals[:, 2]).argmax())
    return axis, normals[axis], math.degrees(math.acos(min(1.0, abs(float(normals[axis, 2])))))


def _slice_boundaries(mask: np.ndarray, origin_kji: np.ndarray, slice_dim: int) -> dict[int, np.ndarray]:
    """In-plane boundary voxels (k, j, i) of each slice: voxels with an in-plane face neighbour outside."""
    in_plane = ndimage.generate_binary_structure(3, 1)
    for end in (0, 2):  # no neighbours across slices
        position = [1, 1, 1]
        position[slice_dim] = end
        in_plane[tuple(position)] = False
    boundary = np.argwhere(mask & ~ndimage.binary_erosion(mask, structure=in_plane, border_value=0)) + origin_kji
    order = np.argsort(boundary[:, slice_dim], kind="stable")
    boundary = boundary[order]
    indices, starts = np.unique(boundary[:, slice_dim], return_index=True)
    return {int(i): part for i, part in zip(indices, np.split(boundary, starts[1:]), strict=True)}


def _farthest_pair(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The two points farthest apart (first such pair), and their distance."""
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    first, second = np.unravel_index(int(squared.argmax()), squared.shape)
    return points[first], points[second], math.sqrt(float(squared[first, second]))


def _short_axis(points: np.ndarray, p: np.ndarray, q: np.ndarray, normal: np.ndarray, window_mm: float,
                chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, float]:
    """Longest extent perpendicular to p→q (in the plane of ``normal``) between two of the points at
    most ``window_mm`` apart along p→q; the endpoints are moved onto their common perpendicular line."""
    along = (q - p) / np.linalg.norm(q - p)
    across = np.cross(normal, along)
    across /= np.linalg.norm(across)
    u, v = points @ along, points @ across
    best, pair = -1.0, (0, 0)
    for start in range(0, len(points), chunk):
        spread = v[start : start + chunk, None] - v[None, :]
        spread[np.abs(u[start : start + chunk, None] - u[None, :]) > window_mm + 1e-9] = -np.inf
        flat = int(spread.argmax())
        if spread.flat[flat] > best:
            best = float(spread.flat[flat])
            pair = (start + flat // len(points), flat % len(points))
    a, b = points[pair[0]], points[pair[1]]
    middle = (u[pair[0]] + u[pair[1]]) / 2
    return a + (middle - u[pair[0]]) * along, b + (middle - u[pair[1]]) * along, best


def _point(vector: np.ndarray) -> tuple[float, float, float]:
    return (float(vector[0]), float(vector[1]), float(vector[2]))


def _measurability(long_mm: float, short_mm: float, lymph_node: bool) -> str:
    """RECIST 1.1 size thresholds (section 3.1), for the reader; the slice-thickness rule is theirs."""
    if lymph_node:
        if short_mm >= 15.0:
            return f"lymph node short axis {short_mm:.1f} mm ≥ 15 mm: measurable (target candidate)"
        if short_mm >= 10.0:
            return f"lymph node short axis {short_mm:.1f} mm: pathological but not measurable (non-target)"
        return f"lymph node short axis {short_mm:.1f} mm < 10 mm: not pathological"
    if long_mm >= 10.0:
        return f"long axis {long_mm:.1f} mm ≥ 10 mm: measurable (also needs ≥ 2 × slice thickness)"
    return f"long axis {long_mm:.1f} mm < 10 mm: non-measurable (RECIST 1.1 minimum 10 mm)"
