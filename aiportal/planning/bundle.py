"""The plan bundle: one folder for navigation and 3D printing.

``plan.json`` (every measurement and a manifest with file sizes and SHA-256), ``measurements.csv``,
one volume-true STL per planned segment (LPS by default, as navigation systems and Slicer expect),
the resected and remnant parts when a resection was planned, Slicer markups (``.mrk.json``) for
trajectories and closest-approach lines, loadable in Slicer with Add Data, and, given the DICOM
series, the segments as a DICOM SEG with their TID 1500 SR in ``dicom/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from aiportal.planning.grid import LabelGrid


def segmentation_node_from_masks(scene, grid: LabelGrid, masks: dict[str, np.ndarray]):
    """A segmentation node holding ``masks`` (name → boolean kji array) on the grid."""
    import slicer

    from aiportal.io.volumes import volume_node_from_array

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plan")
    for name, mask in masks.items():
        labelmap = volume_node_from_array(scene, mask.astype(np.uint8), grid.ijk_to_ras, name,
                                          "vtkMRMLLabelMapVolumeNode")
        before = set(node.GetSegmentation().GetSegmentIDs())
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
        for segment_id in set(node.GetSegmentation().GetSegmentIDs()) - before:
            node.GetSegmentation().GetSegment(segment_id).SetName(name)
        scene.RemoveNode(labelmap)
    return node


def _line_markups(scene, folder: Path, name: str, start, end) -> Path:
    from aiportal.io.markups import write_markups_json

    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    for point in (start, end):
        line.AddControlPointWorld(*map(float, point))
    path = write_markups_json(line, folder)
    scene.RemoveNode(line)
    return path


def _csv_rows(plan: dict) -> list[dict]:
    rows = []
    for row in plan.get("proximity", []):
        rows.append({"kind": "proximity", "item": f"{row['target']} ↔ {row['structure']}",
                     "value": row["gap_mm"], "unit": "mm", "alert": row["alert"]})
    for index, trajectory in enumerate(plan.get("trajectories", []), start=1):
        for row in trajectory["structures"]:
            rows.append({"kind": f"trajectory {index} clearance", "item": row["structure"],
                         "value": row["clearance_mm"], "unit": "mm", "alert": row["alert"]})
    if plan.get("resection"):
        resection = plan["resection"]
        for key, unit in (("organ_ml", "ml"), ("resected_ml", "ml"), ("remnant_ml", "ml"), ("remnant_percent", "%")):
            rows.append({"kind": "resection", "item": f"{resection['organ']} {key}", "value": resection[key],
                         "unit": unit, "alert": False})
    return rows


def write_bundle(grid: LabelGrid, folder: Path, plan: dict, *, segments: list[str],
                 resected_mask: np.ndarray | None = None, coordinates: str = "LPS", runtime=None,
                 dicom_volume=None, dicom_options: dict | None = None) -> dict:
    """Write the bundle into ``folder`` (must be empty or new) and return the manifest.

    With ``dicom_volume`` (the loaded DICOM series the plan was made on) the segments also go into
    ``dicom/`` as a DICOM SEG and a TID 1500 SR (``dicom_options``: see
    :func:`aiportal.planning.bundle_dicom.write_dicom_objects`)."""
    from aiportal.export.surfaces import export_surfaces, safe_file_stem
    from aiportal.runtime import get_runtime

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene = (runtime or get_runtime()).scene
    masks = {name: grid.mask(name) for name in segments}
    if resected_mask is not None and plan.get("resection"):
        organ = plan["resection"]["organ"]
        organ_mask = masks.pop(organ, None)
        organ_mask = grid.mask(organ) if organ_mask is None else organ_mask
        masks[f"{organ} resected"] = organ_mask & resected_mask
        masks[f"{organ} remnant"] = organ_mask & ~resected_mask
    masks = {name: mask for name, mask in masks.items() if mask.any()}
    node = segmentation_node_from_masks(scene, grid, masks)
    (folder / "models").mkdir(exist_ok=True)
    try:
        files = [Path(p) for p in export_surfaces(node, folder / "models", coordinates=coordinates)]
        notes: list[str] = []
        if dicom_volume is not None:
            from aiportal.planning.bundle_dicom import write_dicom_objects

            written, notes = write_dicom_objects(grid, node, dicom_volume, folder / "dicom", **(dicom_options or {}))
            files += written
    finally:
        scene.RemoveNode(node)
    markups = folder / "markups"
    markups.mkdir(exist_ok=True)
    for index, trajectory in enumerate(plan.get("trajectories", []), start=1):
        files.append(_line_markups(scene, markups, f"trajectory_{index}", trajectory["entry_ras"],
                                   trajectory["target_ras"]))
    for row in plan.get("proximity", []):
        if row["centre_distance_mm"] > 0:
            files.append(_line_markups(scene, markups, safe_file_stem(f"{row['target']}_to_{row['structure']}"),
                                       row["target_point_ras"], row["structure_point_ras"]))
    with open(folder / "measurements.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["kind", "item", "value", "unit", "alert"])
        writer.writeheader()
        writer.writerows(_csv_rows(plan))
    files.append(folder / "measurements.csv")
    manifest = {"surfaces_coordinates": coordinates, "notes": notes,
                "files": [{"path": str(p.relative_to(folder)), "bytes": p.stat().st_size,
                           "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in sorted(files)]}
    (folder / "plan.json").write_text(json.dumps({**plan, "manifest": manifest}, indent=2))
    return manifest
