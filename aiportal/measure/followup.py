"""Longitudinal follow-up: lesions of a prior and a current study matched, their change, and the
RECIST 1.1 response of the current study.

- **Alignment.** Both segmentations in one frame of reference (the default: the prior segments are
  resampled onto the current grid by position), or a registration of the prior volume to the
  current one (AIRegister: :func:`aiportal.register.register_volumes` with fixed = current, moving =
  prior), which warps each prior segment onto the current grid (nearest neighbour).
- **Matching.** A prior and a current lesion can match when their masks overlap on the current
  grid or their centroids lie within ``match_distance_mm``. Pairs are chosen one-to-one by the
  largest Dice, then the shortest centroid distance (Hungarian assignment). Unmatched current
  lesions are **new lesions**, unless they overlap a prior lesion: then they are a **fragment** of it
  (RECIST 1.1: the diameters of a fragmented target lesion's pieces are added to the sum); unmatched
  prior lesions have **disappeared** (diameter 0).
- **Measurement.** Every lesion is measured on its own study's grid (:func:`measure_lesions`), never on
  a resampled copy, so diameters and volumes are the ones a reader would report. A segment holding
  several separate lesions gives one entry per lesion ("<segment> lesion N"), each matched on its own.
- **Response.** The prior lesions are the targets (or those named): baseline sum = their prior
  RECIST diameters (long axis; short axis for lymph nodes), current sum = the same lesions now (0 when
  gone); new lesions are not added to the sum but make the response PD (:func:`classify_response`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from scipy.optimize import linear_sum_assignment

from aiportal.errors import InputError
from aiportal.io.volumes import ijk_to_ras_matrix, nearest_on_grid
from aiportal.measure.recist import RecistMeasurement, lesion_masks, measure_lesions
from aiportal.measure.response import ResponseAssessment, classify_response
from aiportal.segmentation import segment_ids, segment_mask

MATCH_DISTANCE_MM = 20.0
MATCHED, NEW, GONE, FRAGMENT = "matched", "new", "disappeared", "fragment"
_UNMATCHABLE = 1e12

TABLE_COLUMNS = (
    ("lesion", "", str), ("status", "", str), ("prior_segment", "", str), ("current_segment", "", str),
    ("prior_long_axis_mm", "mm", float), ("current_long_axis_mm", "mm", float), ("long_axis_change_mm", "mm", float),
    ("prior_short_axis_mm", "mm", float), ("current_short_axis_mm", "mm", float),
    ("short_axis_change_mm", "mm", float), ("prior_reported_mm", "mm", float), ("current_reported_mm", "mm", float),
    ("reported_change_mm", "mm", float), ("reported_change_pct", "%", float), ("prior_volume_ml", "ml", float),
    ("current_volume_ml", "ml", float), ("volume_change_ml", "ml", float), ("volume_change_pct", "%", float),
    ("dice", "", float), ("centroid_distance_mm", "mm", float), ("target", "", str),
)


@dataclass
class LesionChange:
    """One lesion across the two studies (a missing side is None)."""

    lesion: str
    status: str  # matched, new, disappeared
    prior: RecistMeasurement | None
    current: RecistMeasurement | None
    dice: float = 0.0  # on the current grid, after alignment
    centroid_distance_mm: float = math.nan
    target: bool = False

    def _size(self, which: str, attribute: str) -> float:
        measured = getattr(self, which)
        if measured is not None:
            return float(getattr(measured, attribute))
        return 0.0 if (which == "current" and self.status == GONE) else math.nan

    def row(self) -> dict:
        """The lesion's table row: sizes, changes (current - prior), overlap."""
        values = {"lesion": self.lesion, "status": self.status,
                  "prior_segment": self.prior.lesion_name if self.prior else "",
                  "current_segment": self.current.lesion_name if self.current else "",
                  "dice": self.dice, "centroid_distance_mm": self.centroid_distance_mm,
                  "target": "yes" if self.target else "no"}
        for name, attribute in (("long_axis", "long_axis_mm"), ("short_axis", "short_axis_mm"),
                                ("reported", "reported_mm"), ("volume", "volume_ml")):
            unit = "ml" if name == "volume" else "mm"
            before, after = self._size("prior", attribute), self._size("current", attribute)
            values[f"prior_{name}_{unit}"] = before
            values[f"current_{name}_{unit}"] = after
            values[f"{name}_change_{unit}"] = after - before
            if name in ("reported", "volume"):
                values[f"{name}_change_pct"] = 100.0 * (after - before) / before if before > 0 else math.nan
        return values


@dataclass
class FollowUp:
    lesions: list[LesionChange]
    baseline_sum_mm: float
    nadir_sum_mm: float
    current_sum_mm: float
    assessment: ResponseAssessment
    not_measured: dict[str, str] = field(default_factory=dict)  # "prior: name" / "current: name" -> why
    notes: list[str] = field(default_factory=list)

    @property
    def new_lesions(self) -> list[str]:
        return [change.lesion for change in self.lesions if change.status == NEW]

    def summary(self) -> dict:
        return {"response": self.assessment.response.name, "response_text": self.assessment.response.value,
                "explanation": self.assessment.explanation, "baseline_sum_mm": self.baseline_sum_mm,
                "nadir_sum_mm": self.nadir_sum_mm, "current_sum_mm": self.current_sum_mm,
                "change_from_baseline_pct": self.assessment.change_from_baseline_pct,
                "change_from_nadir_mm": self.assessment.change_from_nadir_mm, "new_lesions": self.new_lesions,
                "notes": self.notes}


def compare_studies(prior_segmentation, prior_volume, current_segmentation, current_volume, *,
                    registration=None, targets: list[str] | None = None, lymph_nodes: tuple[str, ...] = (),
                    nadir_sum_mm: float | None = None, match_distance_mm: float = MATCH_DISTANCE_MM,
                    nontarget_progression: bool = False) -> FollowUp:
    """Match the lesions of two studies, measure their change and classify the RECIST 1.1 response.

    ``registration``: a :class:`aiportal.register.RegistrationResult` of ``prior_volume`` (moving) to
    ``current_volume`` (fixed), or None when both are in one frame of reference. ``targets``: prior
    lesion names ("<segment> lesion N") or segment names (all their lesions) that are target lesions
    (default all measured prior lesions). ``lymph_nodes``: segment
    names (in either study) measured by their short axis. ``nadir_sum_mm``: the smallest sum before this
    study (default: the baseline sum, i.e. the prior study is the baseline).
    """
    prior, prior_skipped, _ = _measure_all(prior_segmentation, prior_volume, lymph_nodes)
    current, current_skipped, current_empty = _measure_all(current_segmentation, current_volume, lymph_nodes)
    not_measured = {**{f"prior: {k}": v for k, v in prior_skipped.items()},
                    **{f"current: {k}": v for k, v in current_skipped.items()}}
    if not prior:
        raise InputError(f"No lesion of the prior study {prior_segmentation.GetName()} could be measured",
                         "; ".join(prior_skipped.values()) or "segment the prior lesions first")
    unknown = sorted(set(targets or ()) - {m.lesion_name for m in prior} - {m.segment_name for m in prior})
    if unknown:
        raise InputError(f"Target lesion(s) {', '.join(unknown)} are not measured lesions of the prior study",
                         f"use some of: {', '.join(m.lesion_name for m in prior)}")

    current_ras = ijk_to_ras_matrix(current_volume)
    prior_masks = _LesionMasks(prior_segmentation, prior_volume)
    warped = [_prior_on_current(prior_masks, m, current_volume, registration) for m in prior]
    current_masks = _LesionMasks(current_segmentation, current_volume)
    masks = [current_masks.get(m) for m in current]
    cost = np.full((len(prior), len(current)), _UNMATCHABLE)
    dice = np.zeros_like(cost)
    distance = np.full_like(cost, math.inf)
    for a, before in enumerate(prior):
        moved = warped[a]
        moved_centroid = _centroid(moved, current_ras) if moved.any() else _moved_centroid(
            prior_masks.get(before), prior_volume, registration)
        for b in range(len(current)):
            overlap = np.count_nonzero(moved & masks[b])
            dice[a, b] = 2.0 * overlap / (np.count_nonzero(moved) + np.count_nonzero(masks[b]))
            distance[a, b] = float(np.linalg.norm(moved_centroid - _centroid(masks[b], current_ras)))
            if overlap or distance[a, b] <= match_distance_mm:
                cost[a, b] = (1.0 - dice[a, b]) * 1e6 + distance[a, b]  # Dice first, distance breaks ties
    rows, columns = linear_sum_assignment(cost) if cost.size else ([], [])
    pairs = {a: b for a, b in zip(rows, columns, strict=True) if cost[a, b] < _UNMATCHABLE}

    target_names = set(targets) if targets else {m.lesion_name for m in prior}
    lesions = []
    for a, before in enumerate(prior):
        is_target = before.lesion_name in target_names or before.segment_name in target_names
        if a in pairs:
            b = pairs[a]
            lesions.append(LesionChange(before.lesion_name, MATCHED, before, current[b], float(dice[a, b]),
                                        float(distance[a, b]), is_target))
        else:
            lesions.append(LesionChange(before.lesion_name, GONE, before, None, target=is_target))
    matched_current = set(pairs.values())
    for b, after in enumerate(current):
        if b not in matched_current:
            nearest = float(distance[:, b].min()) if len(prior) else math.nan
            if len(prior) and dice[:, b].max() > 0:  # a piece of a prior lesion that broke up
                a = int(dice[:, b].argmax())
                lesions.append(LesionChange(after.lesion_name, FRAGMENT, None, after, float(dice[a, b]),
                                            float(distance[a, b]), lesions[a].target))
                continue
            lesions.append(LesionChange(after.lesion_name, NEW, None, after, centroid_distance_mm=nearest))

    targets_now = [change for change in lesions if change.target and change.prior is not None]
    fragments = [change for change in lesions if change.status == FRAGMENT and change.target]
    baseline = float(sum(change.prior.reported_mm for change in targets_now))
    current_sum = float(sum(change.current.reported_mm for change in targets_now + fragments
                            if change.current is not None))
    nodes = [change.current.short_axis_mm if change.current else 0.0 for change in targets_now
             if change.prior.lymph_node]
    non_nodal_gone = not fragments and all(change.status == GONE for change in targets_now
                                           if not change.prior.lymph_node)
    notes = []
    small = [c.lesion for c in targets_now if not c.prior.lymph_node and c.prior.long_axis_mm < 10.0]
    if small:
        notes.append(f"target lesion(s) under 10 mm at baseline (not measurable by RECIST 1.1): {', '.join(small)}")
    if fragments:
        notes.append(f"target lesion(s) broke up; their fragments are added to the sum: "
                     f"{', '.join(change.lesion for change in fragments)}")
    if current_empty:
        notes.append(f"empty current segment(s), read as disappeared lesions: {', '.join(current_empty)}")
    if current and not any(change.status == MATCHED for change in lesions):
        notes.append("no lesion matched: if the studies are not in one frame of reference, register them first")
    for warning in getattr(registration, "warnings", None) or ():  # a doubtful registration moves every lesion
        notes.append(f"registration {warning}")
    assessment = classify_response(
        baseline, baseline if nadir_sum_mm is None else nadir_sum_mm, current_sum,
        new_lesions=any(change.status == NEW for change in lesions),
        all_target_lesions_gone=non_nodal_gone,  # nodes need not vanish: classify_response checks < 10 mm
        nodes_short_axis_mm=nodes, nontarget_progression=nontarget_progression)
    return FollowUp(lesions, baseline, baseline if nadir_sum_mm is None else nadir_sum_mm, current_sum, assessment,
                    not_measured, notes)


# -- outputs -------------------------------------------------------------------------------------
def follow_up_rows(follow_up: FollowUp) -> list[dict]:
    return [change.row() for change in follow_up.lesions]


def write_follow_up(follow_up: FollowUp, folder: Path) -> list[Path]:
    """followup.json (rows, response, everything measured) and followup.csv (one row per lesion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = follow_up_rows(follow_up)
    document = {"response": follow_up.summary(), "lesions": [_plain_row(row) for row in rows],
                "measurements": {change.lesion: {"prior": asdict(change.prior) if change.prior else None,
                                                 "current": asdict(change.current) if change.current else None}
                                 for change in follow_up.lesions},
                "not_measured": follow_up.not_measured}
    (folder / "followup.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    with open(folder / "followup.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([name for name, _, _ in TABLE_COLUMNS])
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else round(v, 3) if isinstance(v, float)
                             else v for v in (row[name] for name, _, _ in TABLE_COLUMNS)])
    return [folder / "followup.json", folder / "followup.csv"]


def add_follow_up_table(scene, follow_up: FollowUp, name: str = "RECIST follow-up"):
    """A vtkMRMLTableNode with one row per lesion; the response is in the node's attributes
    (``AIPortal.Response``, ``AIPortal.ResponseExplanation``) and in its description."""
    table = vtk.vtkTable()
    rows = follow_up_rows(follow_up)
    for column, _, kind in TABLE_COLUMNS:
        array = vtk.vtkStringArray() if kind is str else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(str(row[column]) if kind is str else float(row[column]))
        table.AddColumn(array)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    for column, unit, _ in TABLE_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(column, unit)
    summary = follow_up.summary()
    node.SetAttribute("AIPortal.Response", summary["response"])
    node.SetAttribute("AIPortal.ResponseExplanation", summary["explanation"])
    node.SetAttribute("AIPortal.SumOfDiameters", json.dumps({k: summary[k] for k in (
        "baseline_sum_mm", "nadir_sum_mm", "current_sum_mm")}))
    node.SetDescription(f"RECIST 1.1: {summary['response_text']} ({summary['explanation']})")
    return node


# -- helpers -------------------------------------------------------------------------------------
def _measure_all(segmentation_node, volume_node, lymph_nodes) -> tuple[list[RecistMeasurement], dict, list[str]]:
    """Every lesion of every segment measured; the ones that cannot be, with the reason; and the names of
    empty segments."""
    measured, skipped, empty = [], {}, []
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        name = segmentation.GetSegment(segment_id).GetName()
        try:
            lesions = measure_lesions(segmentation_node, segment_id, volume_node, lymph_node=name in lymph_nodes)
        except InputError as error:
            skipped[name] = str(error)
            if " is empty" in error.args[0]:
                empty.append(name)
            continue
        measured += lesions.measurements
        skipped.update(lesions.refused)
    return measured, skipped, empty


class _LesionMasks:
    """Lesion masks of one study on its own grid, each segment split once."""

    def __init__(self, segmentation_node, volume_node) -> None:
        self.segmentation_node, self.volume_node = segmentation_node, volume_node
        self._split: dict[str, list[np.ndarray]] = {}

    def get(self, measurement: RecistMeasurement) -> np.ndarray:
        if measurement.lesions_in_segment == 1:  # the whole segment (speckle included, as before the split)
            return segment_mask(self.segmentation_node, measurement.segment_id, self.volume_node)
        if measurement.segment_id not in self._split:
            self._split[measurement.segment_id] = lesion_masks(self.segmentation_node, measurement.segment_id,
                                                               self.volume_node)
        return self._split[measurement.segment_id][measurement.lesion_index - 1]


def _prior_on_current(prior_masks: _LesionMasks, lesion: RecistMeasurement, current_volume,
                      registration) -> np.ndarray:
    """A prior lesion as a mask on the current grid: resampled by position, or warped by the registration."""
    prior_volume = prior_masks.volume_node
    if registration is None:
        if lesion.lesions_in_segment == 1:
            return segment_mask(prior_masks.segmentation_node, lesion.segment_id, current_volume)
        on_current, _ = nearest_on_grid(prior_masks.get(lesion), ijk_to_ras_matrix(prior_volume),
                                        tuple(reversed(current_volume.GetImageData().GetDimensions())),
                                        ijk_to_ras_matrix(current_volume), fill=False)
        return on_current
    from aiportal.register.registration import image_from_node

    mask = prior_masks.get(lesion).astype(np.uint8)
    current_grid = image_from_node(current_volume, np.zeros(tuple(reversed(
        current_volume.GetImageData().GetDimensions())), np.uint8))
    warped = sitk.Resample(image_from_node(prior_volume, mask), current_grid, registration.itk_transform,
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(warped) > 0


def _centroid(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    if not mask.any():
        return np.full(3, np.inf)
    kji = np.argwhere(mask).mean(axis=0)
    return ijk_to_ras[:3, :3] @ kji[::-1] + ijk_to_ras[:3, 3]


def _moved_centroid(prior_mask: np.ndarray, prior_volume, registration) -> np.ndarray:
    """A prior lesion's centroid in current RAS when its mask does not reach the current grid."""
    centroid = _centroid(prior_mask, ijk_to_ras_matrix(prior_volume))
    if registration is None:
        return centroid
    return (np.asarray(registration.matrix_ras) @ np.append(centroid, 1.0))[:3]


def _plain_row(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
