"""The desktop Planning section's plan bundle and plan vs outcome (aiportal.planning.desktop) on a real Slicer
core scene, against the CLI on the same files:

- the bundle of a segmentation node made on TotalSegmentator's real 20-slice DICOM CT, with a trajectory line
  and a markups cut plane: the same proximity, clearances and resection as ``aiportal plan bundle``, every
  segment as STL, the trajectory as markups, and a DICOM SEG + SR that pass dciodvfy;
- plan vs outcome against a post-operative CT and segmentation moved by a known rigid motion: registered
  back (surfaces within a voxel), and the same numbers as ``aiportal plan outcome``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from dicom_validation import dciodvfy_errors
from test_planning_outcome_registration import _motion, write_postop_case

from aiportal.errors import InputError
from aiportal.io.volumes import load_volume
from aiportal.planning.bundle import segmentation_node_from_masks
from aiportal.planning.desktop import PlanningSession
from aiportal.planning.grid import load_label_grid
from aiportal.planning.scene_plan import OUTCOME_COLUMNS, deviation_text, outcome_table_node

NAMES = ["liver", "aorta", "stomach", "inferior_vena_cava", "portal_vein_and_splenic_vein"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True, timeout=600)


def _segment_id(node, name: str) -> str:
    segmentation = node.GetSegmentation()
    return next(i for i in segmentation.GetSegmentIDs() if segmentation.GetSegment(i).GetName() == name)


def _line(scene, name, entry, target):
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    for point in (entry, target):
        line.AddControlPointWorld(*map(float, point))
    return line


def test_bundle_from_the_panel_matches_the_cli(shared_data, runtime, tmp_path):
    folder = shared_data / "totalseg"
    labels, class_map, series = (folder / "example_seg_dicom.nii.gz", folder / "class_map_total_totalmr.json",
                                 folder / "example_ct_dicom")
    grid = load_label_grid(labels, class_map=class_map, runtime=runtime)
    scene = runtime.scene
    ct = load_volume(series, runtime)
    segmentation = segmentation_node_from_masks(scene, grid, {name: grid.mask(name) for name in NAMES})
    liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver"))).mean(axis=0)
    entry, target = liver + np.array([-70.0, 10.0, 0.0]), liver
    line = _line(scene, "path", entry, target)
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "cut")
    plane.SetOriginWorld(*liver)
    plane.SetNormalWorld(1.0, 0.0, 0.0)

    session = PlanningSession()
    out = tmp_path / "desktop"
    manifest = session.export_bundle(segmentation, ct.node, out, _segment_id(segmentation, "liver"), 8.0,
                                     line_node=line, cut_node=plane, dicom_volume=ct,
                                     dicom_options={"assign_missing_uids": True})
    written = {entry["path"] for entry in manifest["files"]}
    assert {"dicom/segmentation.dcm", "dicom/measurements.dcm", "markups/trajectory_1.mrk.json",
            "measurements.csv"} <= written
    stl = {p for p in written if p.startswith("models/")}
    assert len(stl) == len(NAMES) + 1, stl  # the liver as its resected and remnant parts
    assert dciodvfy_errors(out / "dicom" / "segmentation.dcm") == []
    assert dciodvfy_errors(out / "dicom" / "measurements.dcm") == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # nothing left behind

    cli_out = tmp_path / "cli"
    done = _cli("plan", "bundle", str(labels), "--class-map", str(class_map), "--out", str(cli_out), "--target",
                "liver", "--structures", *NAMES[1:], "--default-threshold", "8", "--trajectory",
                *map(str, [*entry, *target]), "--organ", "liver", "--plane", *map(str, [*liver, 1.0, 0.0, 0.0]),
                "--json")
    assert done.returncode == 0, done.stderr
    desktop, cli = (json.loads((o / "plan.json").read_text()) for o in (out, cli_out))
    shown = {row["structure"]: (row["gap_mm"], row["alert"]) for row in desktop["proximity"]}
    assert shown == {row["structure"]: (pytest.approx(row["gap_mm"], abs=1e-3), row["alert"])
                     for row in cli["proximity"]}
    clearances = {r["structure"]: r["clearance_mm"] for r in desktop["trajectories"][0]["structures"]}
    for row in cli["trajectories"][0]["structures"]:
        assert clearances[row["structure"]] == pytest.approx(row["clearance_mm"], abs=1e-3), row["structure"]
    for key in ("organ_ml", "resected_ml", "remnant_ml", "remnant_percent"):
        assert desktop["resection"][key] == pytest.approx(cli["resection"][key], abs=1e-3), key
    assert 10 < desktop["resection"]["remnant_percent"] < 90

    with pytest.raises(InputError, match="not empty"):
        session.export_bundle(segmentation, ct.node, out, _segment_id(segmentation, "liver"), 8.0)
    failed = tmp_path / "failed"  # anonymised series without new UIDs: refused, nothing left in the folder
    with pytest.raises(InputError):
        session.export_bundle(segmentation, ct.node, failed, _segment_id(segmentation, "liver"), 8.0,
                              dicom_volume=ct)
    assert not any(failed.iterdir())


def test_outcome_from_the_panel_matches_the_cli(shared_data, runtime, tmp_path):
    folder = write_postop_case(shared_data, tmp_path)
    class_map = folder / "class_map_total_totalmr.json"
    motion = _motion()
    scene = runtime.scene
    planned_grid = load_label_grid(folder / "example_seg.nii.gz", class_map=class_map, runtime=runtime)
    actual_grid = load_label_grid(tmp_path / "example_seg.nii.gz", class_map=class_map, runtime=runtime)
    planned_ct, actual_ct = (load_volume(p / "example_ct_sm.nii.gz", runtime).node for p in (folder, tmp_path))
    planned = segmentation_node_from_masks(scene, planned_grid, {n: planned_grid.mask(n) for n in NAMES})
    actual = segmentation_node_from_masks(scene, actual_grid, {n: actual_grid.mask(n) for n in NAMES})
    entry, target = np.array([-100.0, 150.0, 120.0]), np.array([10.0, 180.0, 130.0])
    moved = [motion[:3, :3] @ p + motion[:3, 3] for p in (entry, target)]
    planned_line, actual_line = _line(scene, "planned", entry, target), _line(scene, "actual", *moved)

    session = PlanningSession()
    result = session.outcome(planned, planned_ct, actual, actual_ct, mode="auto", planned_line=planned_line,
                             actual_line=actual_line)
    assert result["frame"]["registered"]
    rows = {row["structure"]: row for row in result["structures"]}
    assert set(rows) == set(NAMES)
    for row in rows.values():
        assert row["mean_surface_distance_mm"] < 0.5 and row["hausdorff_mm"] <= 3.0 + 1e-6, row
    assert result["trajectory"]["target_deviation_mm"] < 1.5 and result["trajectory"]["angle_deg"] < 0.5
    assert "Registered" in deviation_text(result) and "Trajectory: entry" in deviation_text(result)
    table = outcome_table_node(scene, result)
    assert table.GetNumberOfRows() == len(NAMES) and table.GetNumberOfColumns() == len(OUTCOME_COLUMNS)

    done = _cli("plan", "outcome", str(folder / "example_seg.nii.gz"), "--class-map", str(class_map),
                str(tmp_path / "example_seg.nii.gz"), "--structures", *NAMES, "--planned-image",
                str(folder / "example_ct_sm.nii.gz"), "--actual-image", str(tmp_path / "example_ct_sm.nii.gz"),
                "--json")
    assert done.returncode == 0, done.stderr
    for row in json.loads(done.stdout)["structures"]:
        ours = rows[row["structure"]]
        for key in ("planned_ml", "actual_ml"):
            assert ours[key] == pytest.approx(row[key], rel=1e-3), (row["structure"], key)
        for key in ("mean_surface_distance_mm", "hausdorff_mm"):  # the same registration, to within its tolerance
            assert ours[key] == pytest.approx(row[key], abs=0.1), (row["structure"], key)

    # not registered: off by the motion, and said so
    unregistered = session.outcome(planned, planned_ct, actual, actual_ct, mode="no")
    assert not unregistered["frame"]["registered"] and unregistered["frame"]["warnings"]
    assert max(r["mean_surface_distance_mm"] for r in unregistered["structures"]) > 3.0
    with pytest.raises(InputError, match="post-operative"):
        session.outcome(planned, planned_ct, None, actual_ct)
    other = segmentation_node_from_masks(scene, actual_grid, {"spleen": actual_grid.mask("spleen")})
    with pytest.raises(InputError, match="no segment named as in"):
        session.outcome(planned, planned_ct, other, actual_ct)
