"""RECIST measurements of a whole segmentation: tables (JSON, CSV) and axis lines as Slicer markups.

RECIST measures lesions, not segments: a segment holding several separate lesions is measured lesion
by lesion (:func:`aiportal.measure.recist.measure_lesions`). Segments or lesions that cannot be measured
(empty, one voxel, outside the volume, a vessel) are listed with the reason instead of failing the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from aiportal.errors import InputError
from aiportal.io.markups import write_markups_json
from aiportal.measure.lesions import DEFAULT_MIN_LESION_MM3
from aiportal.measure.recist import RecistMeasurement, add_axis_lines, measure_lesions
from aiportal.segmentation import segment_ids as all_segment_ids

_COLUMNS = ("lesion_name", "segment_name", "lesion_index", "lesions_in_segment", "long_axis_mm", "short_axis_mm",
            "reported_mm", "max_3d_diameter_mm", "volume_ml", "lymph_node", "slice_axis", "slice_index", "notes")


def measure_segmentation(segmentation_node, volume_node, *, segment_names: list[str] | None = None,
                         lymph_nodes: tuple[str, ...] = (), min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3,
                         ) -> tuple[list[RecistMeasurement], dict[str, str]]:
    """Measure each lesion of the named segments (default: all); returns the measurements and {segment or
    lesion name: why not} (a name shared by several segments is followed by the segment id there)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = all_segment_ids(segmentation_node)
    if not ids:
        raise InputError(f"{segmentation_node.GetName()} has no segments",
                         "segment the lesions (or load the segmentation) before measuring")
    names = {segment_id: segmentation.GetSegment(segment_id).GetName() for segment_id in ids}
    known = set(names.values())
    unknown = [name for name in (segment_names or []) + list(lymph_nodes) if name not in known]
    if unknown:
        raise InputError(f"No segment named {', '.join(unknown)} in {segmentation_node.GetName()}",
                         f"use one of: {', '.join(names.values())}")
    shared = {name for name in known if list(names.values()).count(name) > 1}
    measured, skipped = [], {}
    for segment_id, name in names.items():
        if segment_names and name not in segment_names:
            continue
        try:
            lesions = measure_lesions(segmentation_node, segment_id, volume_node, lymph_node=name in lymph_nodes,
                                      min_lesion_mm3=min_lesion_mm3)
        except InputError as error:
            skipped[f"{name} ({segment_id})" if name in shared else name] = str(error)
            continue
        measured += lesions.measurements
        skipped.update({f"{lesion} ({segment_id})" if name in shared else lesion: why
                        for lesion, why in lesions.refused.items()})
    return measured, skipped


def measurement_warnings(measurements: list[RecistMeasurement], skipped: dict[str, str]) -> list[str]:
    """What a reader must know about these measurements: segments split into lesions, speckle dropped,
    segments or lesions refused (vessels, ...)."""
    warnings, seen = [], set()
    for m in measurements:
        if m.segment_id in seen:
            continue
        seen.add(m.segment_id)
        if m.lesions_in_segment > 1:
            warnings.append(f"segment {m.segment_name} holds {m.lesions_in_segment} separate lesions: each is "
                            "measured on its own (RECIST measures lesions, not segments)")
        if m.speckle_dropped:
            warnings.append(f"segment {m.segment_name}: {m.speckle_dropped} speckle component(s) under the minimum "
                            "lesion size dropped (--min-lesion-mm3)")
    warnings += [f"{name} not measured: {why}" for name, why in skipped.items()]
    return warnings


def write_measurements(measurements: list[RecistMeasurement], skipped: dict[str, str], folder: Path) -> list[Path]:
    """measurements.json (everything, endpoints in RAS) and measurements.csv (one row per lesion)."""
    folder = Path(folder)
    rows = [{**asdict(m), "reported_mm": m.reported_mm} for m in measurements]
    document = {"measurements": rows, "lesions": len(rows), "not_measured": skipped,
                "warnings": measurement_warnings(measurements, skipped)}
    (folder / "measurements.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    with open(folder / "measurements.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for row in rows:
            writer.writerow([round(v, 3) if isinstance(v, float) else "; ".join(v) if isinstance(v, list) else v
                             for v in (row[column] for column in _COLUMNS)])
    return [folder / "measurements.json", folder / "measurements.csv"]


def write_axis_lines(scene, measurements: list[RecistMeasurement], segmentation_node, folder: Path) -> list[Path]:
    """Each lesion's long and short axis as Slicer markups files (``.mrk.json``), loadable in Slicer."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    written = []
    for measurement in measurements:
        for line in add_axis_lines(scene, measurement, segmentation_node, measurement.segment_id):
            written.append(write_markups_json(line, folder))
    return written


MEASUREMENT_TABLE_COLUMNS = (("lesion_name", ""), ("segment_name", ""), ("long_axis_mm", "mm"), ("short_axis_mm", "mm"),
                             ("reported_mm", "mm"), ("max_3d_diameter_mm", "mm"), ("volume_ml", "ml"),
                             ("slice_index", ""), ("lymph_node", ""), ("notes", ""))


def add_measurement_table(scene, measurements: list[RecistMeasurement], name: str = "RECIST measurements",
                          table_node=None):
    """A vtkMRMLTableNode (new, or ``table_node`` refilled) with one row per measured lesion."""
    import vtk

    table = vtk.vtkTable()
    for column, _ in MEASUREMENT_TABLE_COLUMNS:
        numeric = column.endswith(("_mm", "_ml"))
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        for m in measurements:
            value = m.reported_mm if column == "reported_mm" else getattr(m, column)
            array.InsertNextValue(float(value) if numeric else "; ".join(value) if isinstance(value, list)
                                  else str(value))
        table.AddColumn(array)
    node = table_node or scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAndObserveTable(table)
    for column, unit in MEASUREMENT_TABLE_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(column, unit)
    return node


def report_text(measurements: list[RecistMeasurement], follow_up=None) -> str:
    """Plain text for a radiology report: one line per lesion, and the response when there is a follow-up."""
    lines = []
    for m in measurements:
        kind = "short axis (lymph node)" if m.lymph_node else "long axis"
        lines.append(f"{m.lesion_name}: {m.reported_mm:.1f} mm {kind}; {m.long_axis_mm:.1f} x "
                     f"{m.short_axis_mm:.1f} mm (slice {m.slice_index}), volume {m.volume_ml:.2f} ml")
    if measurements:
        lines.append(f"Sum of diameters: {sum(m.reported_mm for m in measurements):.1f} mm")
    if follow_up is not None:
        summary = follow_up.summary()
        lines.append(f"RECIST 1.1 response: {summary['response_text']} ({summary['explanation']}); sum "
                     f"{summary['baseline_sum_mm']:.1f} mm at baseline, {summary['current_sum_mm']:.1f} mm now")
    return "\n".join(lines)
