"""RECIST measurements of a whole segmentation: tables (JSON, CSV) and axis lines as Slicer markups.

Segments that cannot be measured (empty, one voxel, outside the volume) are listed with the
reason instead of failing the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import slicer

from aiportal.errors import InputError
from aiportal.measure.recist import RecistMeasurement, add_axis_lines, measure_segment
from aiportal.segmentation import segment_ids as all_segment_ids

_COLUMNS = ("segment_name", "long_axis_mm", "short_axis_mm", "reported_mm", "max_3d_diameter_mm", "volume_ml",
            "lymph_node", "slice_axis", "slice_index", "notes")


def measure_segmentation(segmentation_node, volume_node, *, segment_names: list[str] | None = None,
                         lymph_nodes: tuple[str, ...] = ()) -> tuple[list[RecistMeasurement], dict[str, str]]:
    """Measure the named segments (default: all); returns the measurements and {segment name: why not}."""
    segmentation = segmentation_node.GetSegmentation()
    by_name = {segmentation.GetSegment(s).GetName(): s for s in all_segment_ids(segmentation_node)}
    unknown = [name for name in (segment_names or []) + list(lymph_nodes) if name not in by_name]
    if unknown:
        raise InputError(f"No segment named {', '.join(unknown)} in {segmentation_node.GetName()}",
                         f"use one of: {', '.join(by_name)}")
    measured, skipped = [], {}
    for name in segment_names or list(by_name):
        try:
            measured.append(measure_segment(segmentation_node, by_name[name], volume_node,
                                            lymph_node=name in lymph_nodes))
        except InputError as error:
            skipped[name] = str(error)
    return measured, skipped


def write_measurements(measurements: list[RecistMeasurement], skipped: dict[str, str], folder: Path) -> list[Path]:
    """measurements.json (everything, endpoints in RAS) and measurements.csv (one row per lesion)."""
    folder = Path(folder)
    rows = [{**asdict(m), "reported_mm": m.reported_mm} for m in measurements]
    (folder / "measurements.json").write_text(json.dumps({"measurements": rows, "not_measured": skipped}, indent=2))
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
            storage = slicer.vtkMRMLMarkupsJsonStorageNode()
            storage.SetScene(scene)
            path = folder / (line.GetName().replace("/", "_") + ".mrk.json")
            storage.SetFileName(str(path))
            if not storage.WriteData(line):
                raise OSError(f"could not write {path}")
            written.append(path)
    return written
