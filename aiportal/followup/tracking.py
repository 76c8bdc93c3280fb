"""Lesions tracked over N time points: one persistent Tracking Identifier / UID per lesion.

- **Alignment.** The last time point is the current one; every prior is registered to it (rigid,
  :func:`aiportal.register.register_volumes`, fixed = current, moving = prior) unless ``register=False``
  (then all must share one frame of reference: a prior whose Frame of Reference UID differs is left out,
  with the reason). Every lesion mask is warped onto the current grid (nearest neighbour) and its centroid
  mapped to current RAS, so all time points are compared in one space.
- **Matching** (time point t against the tracks seen before it, each with its last seen mask): a pair can
  match when the masks overlap or the centroids lie within ``match_distance_mm``; pairs are chosen one to
  one by the largest Dice, then the shortest distance (Hungarian assignment, as
  :func:`aiportal.measure.followup.compare_studies`). A lesion that matches no track is **split** off a track
  whose mask it overlaps (RECIST 1.1: a fragment's diameter adds to its parent's), else **new**; a track seen
  at t-1 that matches nothing has **merged** into the lesion its mask overlaps (its diameter is then 0:
  the merged lesion carries it), else **disappeared**. A disappeared track matched again **reappeared**
  (RECIST: progression, like a new lesion).
- **Measurement.** Each lesion is measured on its own study's grid (:func:`measure_lesions`), never on a
  warped copy. Segments named in ``organs`` are not lesions: only their volume is followed.
- **Response** at every time point after the baseline (the first), :func:`classify_response` with the
  baseline's lesions as targets, their fragments added, the nadir = the smallest earlier sum; any new or
  reappeared lesion seen so far makes it PD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy.optimize import linear_sum_assignment

from aiportal.errors import InputError
from aiportal.export.dicom_seg import TRACKING_UID_TAG
from aiportal.io.volumes import ijk_to_ras_matrix, nearest_on_grid
from aiportal.measure.recist import RecistMeasurement, lesion_masks, measure_lesions
from aiportal.measure.response import ResponseAssessment, classify_response
from aiportal.provenance import read_tag
from aiportal.segmentation import segment_ids, segment_mask, shape_kji

MATCH_DISTANCE_MM = 20.0
BASELINE, PRESENT, NEW, SPLIT, MERGED, GONE, REAPPEARED = (
    "baseline", "present", "new", "split", "merged", "disappeared", "reappeared")
_UNMATCHABLE = 1e12


@dataclass
class TimePoint:
    """One study: its volume, its segmentation (on that volume's grid), and what identifies it."""

    label: str  # e.g. the study date
    volume: object  # vtkMRMLScalarVolumeNode
    segmentation: object  # vtkMRMLSegmentationNode
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    source: object = None  # aiportal.export.dicom_source.ExportSource when loaded from DICOM (for the SR)
    seg_path: object = None  # the DICOM SEG its segmentation was read from


@dataclass
class LesionState:
    """A tracked lesion at one time point."""

    status: str
    measurement: RecistMeasurement | None = None
    dice: float = math.nan  # with the track's previous mask
    distance_mm: float = math.nan
    merged_into: str = ""  # tracking id that carries it now

    @property
    def reported_mm(self) -> float:
        return self.measurement.reported_mm if self.measurement else 0.0

    @property
    def volume_ml(self) -> float:
        return self.measurement.volume_ml if self.measurement else 0.0


@dataclass
class Track:
    tracking_id: str
    tracking_uid: str
    states: list[LesionState | None]  # per time point; None before it was first seen
    segment_name: str = ""
    parent: str = ""  # for a split: the tracking id it broke off
    terminology: str = ""  # serialized terminology of its segment (for the SR's finding)

    @property
    def first_seen(self) -> int:
        return next(index for index, state in enumerate(self.states) if state is not None)


@dataclass
class Longitudinal:
    labels: list[str]
    tracks: list[Track]
    sums_mm: list[float]  # target sum per time point
    responses: list[ResponseAssessment | None]  # None at baseline
    organ_volumes_ml: dict[str, list[float]]
    registrations: list[dict | None]  # summary of each prior's registration (None: same frame / current)
    excluded: dict[str, str] = field(default_factory=dict)  # time point -> why it was left out
    not_measured: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Lesion:
    measurement: RecistMeasurement
    own_mask: np.ndarray
    mask: np.ndarray  # on the current grid
    centroid: np.ndarray  # current RAS
    terminology: str
    segment_tracking_uid: str = ""  # the SEG segment's Tracking UID, when the segmentation came from a SEG


def _tracking_uid(lesion: _Lesion) -> str:
    """The lesion's Tracking UID: its SEG segment's (one lesion in the segment), or derived from it as
    :mod:`aiportal.export.dicom_sr` derives it for one of several lesions of a segment, so the follow-up
    reports carry the UIDs the lesion's first SR carried; a new UID when the segment has none."""
    uid, measurement = lesion.segment_tracking_uid, lesion.measurement
    if not uid:
        return generate_uid()
    if measurement.lesions_in_segment > 1:
        return generate_uid(entropy_srcs=["aiportal-lesion", uid, str(measurement.lesion_index)])
    return uid


def track_lesions(timepoints: Sequence[TimePoint], *, register: bool = True, organs: Sequence[str] = (),
                  lymph_nodes: Sequence[str] = (), match_distance_mm: float = MATCH_DISTANCE_MM,
                  registrar=None) -> Longitudinal:
    """Follow every lesion of ``timepoints`` (oldest first, the last is the current study).

    ``registrar(fixed_volume, moving_volume)`` returns a registration result (default: rigid
    :func:`register_volumes`).
    """
    if len(timepoints) < 2:
        raise InputError(f"Follow-up needs at least two time points, got {len(timepoints)}",
                         "give the current study and one or more priors")
    current = timepoints[-1]
    kept, excluded, registrations = [], {}, []
    for point in timepoints[:-1]:
        other_frame = (point.frame_of_reference_uid and current.frame_of_reference_uid
                       and point.frame_of_reference_uid != current.frame_of_reference_uid)
        if not register and other_frame:
            excluded[point.label] = (f"on another frame of reference ({point.frame_of_reference_uid}) than the current "
                                     "study and registration is off — register it (drop --no-register)")
            continue
        result = None
        if register:
            if registrar is None:
                from aiportal.register import register_volumes

                result = register_volumes(current.volume, point.volume, kind="rigid")
            else:
                result = registrar(current.volume, point.volume)
        kept.append((point, result))
        registrations.append(None if result is None else result.summary())
    kept.append((current, None))
    registrations.append(None)
    if len(kept) < 2:
        raise InputError("No prior is usable: " + "; ".join(f"{k}: {v}" for k, v in excluded.items()),
                         "give a prior on the current frame of reference, or let it be registered")

    grid = (shape_kji(current.volume), ijk_to_ras_matrix(current.volume))
    organ_names, lymph = set(organs), set(lymph_nodes)
    not_measured: dict[str, str] = {}
    organ_volumes: dict[str, list[float]] = {}
    per_point: list[list[_Lesion]] = []
    for index, (point, result) in enumerate(kept):
        lesions, skipped = _lesions_of(point, result, grid, organ_names, lymph)
        per_point.append(lesions)
        not_measured.update({f"{point.label}: {name}": why for name, why in skipped.items()})
        for name, volume_ml in _organ_volumes(point, organ_names).items():
            organ_volumes.setdefault(name, [math.nan] * len(kept))[index] = volume_ml
    if not per_point[0]:
        raise InputError(f"No lesion of the baseline {kept[0][0].label} could be measured",
                         "; ".join(v for k, v in not_measured.items() if k.startswith(kept[0][0].label))
                         or "segment the baseline lesions first")

    tracks: list[Track] = []
    last: list[_Lesion] = []  # each track's last seen lesion, by track index
    for lesion in per_point[0]:
        tracks.append(_new_track(len(tracks), lesion, len(kept), 0, LesionState(BASELINE, lesion.measurement)))
        last.append(lesion)
    for t in range(1, len(kept)):
        _match_time_point(t, per_point[t], tracks, last, match_distance_mm)

    sums, responses = _responses(tracks, len(kept))
    notes = [f"registration of {kept[i][0].label}: {w}" for i, (_, r) in enumerate(kept) if r is not None
             for w in (r.warnings or ())]
    return Longitudinal([p.label for p, _ in kept], tracks, sums, responses, organ_volumes, registrations,
                        excluded, not_measured, notes)


def _new_track(index: int, lesion: _Lesion, count: int, t: int, state: LesionState, parent: str = "") -> Track:
    tracking_id = f"Lesion {index + 1}"
    uid = _tracking_uid(lesion)  # one per lesion; the SR of every time point carries it
    states: list[LesionState | None] = [None] * count
    states[t] = state
    return Track(tracking_id, uid, states, lesion.measurement.segment_name, parent, lesion.terminology)


def _match_time_point(t: int, lesions: list[_Lesion], tracks: list[Track], last: list[_Lesion],
                      match_distance_mm: float) -> None:
    """Assign the lesions of time point ``t`` to tracks (in place); unassigned ones start tracks."""
    count, existing = len(tracks[0].states), len(tracks)
    cost = np.full((len(tracks), len(lesions)), _UNMATCHABLE)
    dice = np.zeros_like(cost)
    distance = np.full_like(cost, math.inf)
    for a, before in enumerate(last):
        for b, now in enumerate(lesions):
            overlap = np.count_nonzero(before.mask & now.mask)
            total = np.count_nonzero(before.mask) + np.count_nonzero(now.mask)
            dice[a, b] = 2.0 * overlap / total if total else 0.0
            distance[a, b] = float(np.linalg.norm(before.centroid - now.centroid))
            if overlap or distance[a, b] <= match_distance_mm:
                cost[a, b] = (1.0 - dice[a, b]) * 1e6 + distance[a, b]  # Dice first, distance breaks ties
    rows, columns = linear_sum_assignment(cost) if cost.size else ([], [])
    pairs = {int(a): int(b) for a, b in zip(rows, columns, strict=True) if cost[a, b] < _UNMATCHABLE}
    assigned = {b: a for a, b in pairs.items()}
    for a, track in enumerate(tracks):
        before = track.states[t - 1]
        if a in pairs:
            b = pairs[a]
            status = REAPPEARED if before is None or before.measurement is None else PRESENT
            track.states[t] = LesionState(status, lesions[b].measurement, float(dice[a, b]), float(distance[a, b]))
            last[a] = lesions[b]
        elif before is not None and before.measurement is not None:  # seen at t-1, not now
            overlapping = [b for b in range(len(lesions)) if dice[a, b] > 0 and b in assigned]
            if overlapping:
                b = max(overlapping, key=lambda b: dice[a, b])
                track.states[t] = LesionState(MERGED, None, float(dice[a, b]), float(distance[a, b]),
                                              tracks[assigned[b]].tracking_id)
            else:
                track.states[t] = LesionState(GONE)
        elif before is not None:  # gone or merged before: stays so
            track.states[t] = LesionState(before.status if before.status in (GONE, MERGED) else GONE,
                                          merged_into=before.merged_into)
    for b, lesion in enumerate(lesions):
        if b in assigned:
            continue
        overlapping = [a for a in range(existing) if dice[a, b] > 0]
        if overlapping:
            a = max(overlapping, key=lambda a: dice[a, b])
            state = LesionState(SPLIT, lesion.measurement, float(dice[a, b]), float(distance[a, b]))
            tracks.append(_new_track(len(tracks), lesion, count, t, state, tracks[a].tracking_id))
        else:
            near = float(distance[:, b].min()) if existing else math.nan
            tracks.append(_new_track(len(tracks), lesion, count, t, LesionState(NEW, lesion.measurement,
                                                                                distance_mm=near)))
        last.append(lesion)


def _responses(tracks: list[Track], count: int) -> tuple[list[float], list[ResponseAssessment | None]]:
    targets = [track for track in tracks if track.first_seen == 0]
    target_ids = {track.tracking_id for track in targets}
    fragments = [track for track in tracks if track.parent in target_ids]
    sums = [float(sum(track.states[t].reported_mm for track in targets + fragments if track.states[t] is not None))
            for t in range(count)]
    responses: list[ResponseAssessment | None] = [None]
    for t in range(1, count):
        new = any(track.states[s] is not None and track.states[s].status in (NEW, REAPPEARED)
                  for track in tracks for s in range(1, t + 1))
        non_nodal = [track for track in targets if not track.states[0].measurement.lymph_node]
        gone = (all(track.states[t].measurement is None for track in non_nodal)
                and not any(track.states[t] is not None and track.states[t].measurement for track in fragments))
        nodes = [track.states[t].measurement.short_axis_mm if track.states[t].measurement else 0.0
                 for track in targets if track.states[0].measurement.lymph_node]
        responses.append(classify_response(sums[0], min(sums[:t]), sums[t], new_lesions=new,
                                            all_target_lesions_gone=gone, nodes_short_axis_mm=nodes))
    return sums, responses


def _lesions_of(point: TimePoint, registration, grid, organs: set[str], lymph: set[str]
                ) -> tuple[list[_Lesion], dict[str, str]]:
    """Every lesion of a time point measured on its own grid, its mask warped onto the current grid."""
    shape, current_ras = grid
    own_ras = ijk_to_ras_matrix(point.volume)
    segmentation = point.segmentation.GetSegmentation()
    lesions, skipped = [], {}
    for segment_id in segment_ids(point.segmentation):
        segment = segmentation.GetSegment(segment_id)
        name = segment.GetName()
        if name in organs:
            continue
        try:
            measured = measure_lesions(point.segmentation, segment_id, point.volume, lymph_node=name in lymph)
        except InputError as error:
            skipped[name] = str(error)
            continue
        skipped.update(measured.refused)
        masks = lesion_masks(point.segmentation, segment_id, point.volume)
        for measurement in measured.measurements:
            own = masks[measurement.lesion_index - 1]
            lesions.append(_Lesion(measurement, own, _on_current(own, point.volume, registration, shape, current_ras),
                                   _centroid(own, own_ras, registration), segment.GetTerminology(),
                                   read_tag(segment, TRACKING_UID_TAG) or ""))
    return lesions, skipped


def _on_current(mask: np.ndarray, volume, registration, shape, current_ras) -> np.ndarray:
    if registration is None:
        on_current, _ = nearest_on_grid(mask, ijk_to_ras_matrix(volume), shape, current_ras, fill=False)
        return on_current.astype(bool)
    from aiportal.register.registration import image_from_node

    reference = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
    flip = np.diag([-1.0, -1.0, 1.0])
    linear = flip @ current_ras[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetDirection([float(d) for d in (linear / spacing).ravel()])
    reference.SetOrigin([float(o) for o in flip @ current_ras[:3, 3]])
    warped = sitk.Resample(image_from_node(volume, mask.astype(np.uint8)), reference, registration.itk_transform,
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(warped) > 0


def _centroid(mask: np.ndarray, ijk_to_ras: np.ndarray, registration) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    ras = ijk_to_ras[:3, :3] @ kji[::-1] + ijk_to_ras[:3, 3]
    if registration is None:
        return ras
    return (np.asarray(registration.matrix_ras) @ np.append(ras, 1.0))[:3]  # moving RAS -> current RAS


def _organ_volumes(point: TimePoint, organs: set[str]) -> dict[str, float]:
    voxel_ml = abs(float(np.linalg.det(ijk_to_ras_matrix(point.volume)[:3, :3]))) / 1000.0
    segmentation = point.segmentation.GetSegmentation()
    volumes = {}
    for segment_id in segment_ids(point.segmentation):
        name = segmentation.GetSegment(segment_id).GetName()
        if name in organs:
            mask = segment_mask(point.segmentation, segment_id, point.volume)
            volumes[name] = float(np.count_nonzero(mask)) * voxel_ml
    return volumes
