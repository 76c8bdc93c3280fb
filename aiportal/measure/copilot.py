"""Copilot for manual RECIST lines: check a line the reader placed on a segmented lesion against the
exact axes, and suggest the right endpoints.

For a placed line (two RAS points, or a Markups line node) on a segment:

- its **slice** is the axial slice nearest the line's midpoint; endpoints off that slice's plane
  (by more than a quarter of the slice spacing) or on different slices are flagged;
- the **suggestion** is the exact RECIST long and short axes on that slice (:func:`axes_on_slice`);
- a long axis is compared with the suggested long axis; a short axis with the suggested short axis,
  and for perpendicularity with the reader's own long axis when given (else the suggested one);
- a line on another slice than the lesion's RECIST slice (the longest long axis) is flagged, with
  how much longer the long axis is there.

Differences are placed minus exact: length in mm, angle between the lines in degrees (0 to 90), and
the distance of each placed endpoint to the nearest suggested endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aiportal.errors import InputError
from aiportal.io.volumes import ijk_to_ras_matrix
from aiportal.measure.recist import (
    MEASUREMENT_ATTRIBUTE,
    RecistMeasurement,
    SliceAxes,
    axes_on_slice,
    axial_slices,
    lesion_slice_indices,
    measure_lesions,
    measure_segment,
)

Point = tuple[float, float, float]
LONG, SHORT = "long", "short"

#: A placed length within one in-plane voxel of the exact one is a good caliper reading.
LENGTH_TOLERANCE_VOXELS = 1.0
#: Angles: to the exact axis, and from 90° to the long axis for a short axis.
ANGLE_TOLERANCE_DEG = 5.0
#: Endpoints farther than this fraction of the slice spacing from the slice plane are off the slice.
OFF_SLICE_FRACTION = 0.25
#: Another slice's long axis longer by less than this is a tie: the reader's slice is as good.
SLICE_TIE_MM = 0.5


@dataclass
class LineCheck:
    """What the copilot says about one placed line."""

    kind: str  # "long" or "short"
    placed_endpoints_ras: tuple[Point, Point]
    placed_length_mm: float
    slice_axis: str
    slice_index: int  # the slice the line is on (nearest its midpoint)
    suggestion: SliceAxes | None  # exact axes on that slice; None when the lesion is not on it
    recist: RecistMeasurement  # the lesion's exact RECIST measurement (on its own slice)
    length_difference_mm: float  # placed - suggested
    angle_difference_deg: float  # between the placed line and the suggested axis, 0..90
    endpoint_offsets_mm: tuple[float, float]  # each placed endpoint to its nearest suggested endpoint
    perpendicularity_error_deg: float | None = None  # short axis: |angle to the long axis - 90°|
    off_slice_mm: float = 0.0  # largest distance of an endpoint from the slice plane
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags

    @property
    def suggested_endpoints_ras(self) -> tuple[Point, Point]:
        axes = self.suggestion or _as_slice_axes(self.recist)
        endpoints = axes.long_axis_endpoints_ras if self.kind == LONG else axes.short_axis_endpoints_ras
        return _ordered_like(endpoints, self.placed_endpoints_ras)

    @property
    def suggested_length_mm(self) -> float:
        axes = self.suggestion or _as_slice_axes(self.recist)
        return axes.long_axis_mm if self.kind == LONG else axes.short_axis_mm

    def summary(self) -> str:
        """One paragraph for the panel: the placed and exact lengths, and every flag."""
        head = (f"{self.kind} axis: placed {self.placed_length_mm:.1f} mm, exact {self.suggested_length_mm:.1f} mm "
                f"({self.length_difference_mm:+.1f} mm), {self.angle_difference_deg:.1f}° from the exact axis, "
                f"endpoints {self.endpoint_offsets_mm[0]:.1f} / {self.endpoint_offsets_mm[1]:.1f} mm away")
        return head + "".join(f"\n- {flag}" for flag in self.flags) if self.flags else head + " — OK"


def check_line(segmentation_node, segment_id: str, volume_node, endpoints_ras: Sequence[Sequence[float]], *,
               kind: str | None = None, long_axis_endpoints_ras: Sequence[Sequence[float]] | None = None,
               length_tolerance_mm: float | None = None, angle_tolerance_deg: float = ANGLE_TOLERANCE_DEG,
               recist: RecistMeasurement | None = None) -> LineCheck:
    """Check a placed line (two RAS points) on a segment; ``kind`` "long", "short" or None (the exact axis
    closer in direction). ``long_axis_endpoints_ras``: the reader's long axis, for a short axis's checks.
    ``recist``: the lesion's measurement if already made (saves measuring it again)."""
    placed = np.asarray(endpoints_ras, dtype=float)
    if placed.shape != (2, 3):
        raise InputError(f"A line needs two points (x, y, z); got an array of shape {placed.shape}",
                         "place both endpoints of the line")
    placed_length = float(np.linalg.norm(placed[1] - placed[0]))
    if placed_length == 0.0:
        raise InputError("The line has both endpoints at the same place", "drag one endpoint across the lesion")
    recist = recist or _nearest_lesion(segmentation_node, segment_id, volume_node, placed)
    lesion_index = recist.lesion_index if recist.lesions_in_segment > 1 else None  # one lesion of several
    axis, normal, _ = axial_slices(volume_node)
    ijk_to_ras = ijk_to_ras_matrix(volume_node)
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    slice_coordinates = (np.column_stack([placed, np.ones(2)]) @ ras_to_ijk.T)[:, axis]
    slice_index = int(round(float(slice_coordinates.mean())))
    slice_spacing = float(abs(ijk_to_ras[:3, axis] @ normal))  # distance between slice planes
    plane_point = ijk_to_ras[:3, axis] * slice_index + ijk_to_ras[:3, 3]
    off_slice = float(np.abs((placed - plane_point) @ normal).max())
    in_plane = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    voxel_mm = float(max(in_plane[a] for a in range(3) if a != axis))
    length_tolerance = length_tolerance_mm if length_tolerance_mm is not None else LENGTH_TOLERANCE_VOXELS * voxel_mm

    flags: list[str] = []
    slice_name = f"{'ijk'[axis]}={slice_index}"
    endpoint_slices = {int(round(float(c))) for c in slice_coordinates}
    if len(endpoint_slices) > 1:
        flags.append(f"the endpoints are on different slices ({', '.join(map(str, sorted(endpoint_slices)))}): "
                     "RECIST axes lie in one axial slice")
    elif off_slice > OFF_SLICE_FRACTION * slice_spacing:
        flags.append(f"the line is {off_slice:.1f} mm off the plane of slice {slice_name}")

    suggestion = None
    if slice_index in lesion_slice_indices(segmentation_node, segment_id, volume_node, lesion_index):
        suggestion = axes_on_slice(segmentation_node, segment_id, volume_node, slice_index, lesion_index)
    else:
        flags.append(f"the lesion is not on slice {slice_name}: the exact axes are on slice "
                     f"{recist.slice_axis}={recist.slice_index}")
    reference = suggestion or _as_slice_axes(recist)
    if kind is None:
        kind = LONG if (_angle(placed, reference.long_axis_endpoints_ras)
                        <= _angle(placed, reference.short_axis_endpoints_ras)) else SHORT
    if kind not in (LONG, SHORT):
        raise InputError(f"Unknown line kind {kind!r}", "use 'long' or 'short'")

    if suggestion is not None and slice_index != recist.slice_index:
        longer = recist.long_axis_mm - suggestion.long_axis_mm
        if longer > SLICE_TIE_MM:
            flags.append(f"not on the long-axis slice: on slice {recist.slice_axis}={recist.slice_index} the long axis "
                         f"is {recist.long_axis_mm:.1f} mm, {longer:.1f} mm longer than on slice {slice_name}")

    exact = np.asarray(reference.long_axis_endpoints_ras if kind == LONG else reference.short_axis_endpoints_ras)
    exact_length = reference.long_axis_mm if kind == LONG else reference.short_axis_mm
    length_difference = placed_length - exact_length
    angle = _angle(placed, exact) if exact_length > 0 else 0.0
    offsets = _endpoint_offsets(placed, exact)
    if abs(length_difference) > length_tolerance:
        flags.append(f"{'too short' if length_difference < 0 else 'too long'}: {placed_length:.1f} mm placed, "
                     f"{exact_length:.1f} mm exact ({length_difference:+.1f} mm)")
    if angle > angle_tolerance_deg:
        flags.append(f"rotated {angle:.1f}° from the exact {kind} axis")

    perpendicularity = None
    if kind == SHORT:
        long_line = np.asarray(long_axis_endpoints_ras if long_axis_endpoints_ras is not None
                               else reference.long_axis_endpoints_ras, dtype=float)
        perpendicularity = abs(90.0 - _angle(placed, long_line))
        if perpendicularity > angle_tolerance_deg:
            flags.append(f"not perpendicular to the long axis: {90.0 - perpendicularity:.1f}° instead of 90°")
        if long_axis_endpoints_ras is not None:
            long_slice = int(round(float((np.column_stack([long_line, np.ones(2)]) @ ras_to_ijk.T)[:, axis].mean())))
            if long_slice != slice_index:
                flags.append(f"not on the long axis's slice: short axis on slice {slice_name}, long axis on "
                             f"{'ijk'[axis]}={long_slice}")
    return LineCheck(
        kind=kind,
        placed_endpoints_ras=(_point(placed[0]), _point(placed[1])),
        placed_length_mm=placed_length,
        slice_axis="ijk"[axis],
        slice_index=slice_index,
        suggestion=suggestion,
        recist=recist,
        length_difference_mm=float(length_difference),
        angle_difference_deg=float(angle),
        endpoint_offsets_mm=offsets,
        perpendicularity_error_deg=perpendicularity,
        off_slice_mm=off_slice,
        flags=flags,
    )


# -- Markups line nodes ----------------------------------------------------------------------------
def line_kind(line_node) -> str | None:
    """"long"/"short" from the line's measurement attribute or name (as ``add_axis_lines`` sets them)."""
    text = f"{line_node.GetAttribute(MEASUREMENT_ATTRIBUTE) or ''} {line_node.GetName()}".lower()
    return SHORT if "short" in text else LONG if "long" in text else None


def line_endpoints(line_node) -> tuple[Point, Point]:
    """The two control points of a Markups line node, in world RAS."""
    if line_node.GetNumberOfControlPoints() < 2:
        raise InputError(f"Line {line_node.GetName()} has {line_node.GetNumberOfControlPoints()} of its 2 points",
                         "place both endpoints of the line")
    return (_point(line_node.GetNthControlPointPositionWorld(0)), _point(line_node.GetNthControlPointPositionWorld(1)))


def check_line_node(line_node, segmentation_node, segment_id: str, volume_node, *, long_axis_node=None,
                    recist: RecistMeasurement | None = None) -> LineCheck:
    """:func:`check_line` on a Markups line node (its kind from its name/attribute, else by direction)."""
    long_axis = line_endpoints(long_axis_node) if long_axis_node is not None else None
    return check_line(segmentation_node, segment_id, volume_node, line_endpoints(line_node),
                      kind=line_kind(line_node), long_axis_endpoints_ras=long_axis, recist=recist)


def apply_suggestion(line_node, check: LineCheck) -> None:
    """Move the line's endpoints onto the suggested exact axis (each to the one nearest it)."""
    for index, point in enumerate(check.suggested_endpoints_ras):
        line_node.SetNthControlPointPositionWorld(index, *point)


# -- geometry ------------------------------------------------------------------------------------
def _nearest_lesion(segmentation_node, segment_id: str, volume_node, placed: np.ndarray) -> RecistMeasurement:
    """The lesion of the segment whose long axis's middle is nearest the placed line's middle (the whole
    segment when none of its lesions can be measured: its own error then says why)."""
    lesions = measure_lesions(segmentation_node, segment_id, volume_node).measurements
    if not lesions:
        return measure_segment(segmentation_node, segment_id, volume_node)
    middle = placed.mean(axis=0)
    return min(lesions, key=lambda m: float(np.linalg.norm(np.mean(m.long_axis_endpoints_ras, axis=0) - middle)))


def _as_slice_axes(measurement: RecistMeasurement) -> SliceAxes:
    return SliceAxes(measurement.slice_axis, measurement.slice_index, measurement.long_axis_mm,
                     measurement.short_axis_mm, measurement.long_axis_endpoints_ras,
                     measurement.short_axis_endpoints_ras)


def _angle(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> float:
    """Angle between two lines (not directions), 0..90 degrees."""
    u = np.subtract(first[1], first[0])
    v = np.subtract(second[1], second[0])
    cosine = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, cosine)))


def _endpoint_offsets(placed: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Distance of each placed endpoint to the exact endpoint it is matched with (the pairing of least sum)."""
    straight = np.linalg.norm(placed - exact, axis=1)
    crossed = np.linalg.norm(placed - exact[::-1], axis=1)
    chosen = straight if straight.sum() <= crossed.sum() else crossed
    return float(chosen[0]), float(chosen[1])


def _ordered_like(endpoints, placed) -> tuple[Point, Point]:
    exact = np.asarray(endpoints, dtype=float)
    placed = np.asarray(placed, dtype=float)
    crossed = np.linalg.norm(placed - exact[::-1], axis=1).sum() < np.linalg.norm(placed - exact, axis=1).sum()
    ordered = exact[::-1] if crossed else exact
    return _point(ordered[0]), _point(ordered[1])


def _point(vector) -> Point:
    return (float(vector[0]), float(vector[1]), float(vector[2]))
