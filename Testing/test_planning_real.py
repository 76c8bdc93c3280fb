"""Planning on TotalSegmentator's real example CT segmentations (3 mm abdomen; 0.98×0.98×2 mm LAS chest).

Distances equal brute force over every voxel centre to 1e-3 mm; resection volumes equal voxel counts;
the CLI writes a plan bundle whose STL volumes, markups and manifest check out.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial import cKDTree

from aiportal.planning.grid import load_label_grid
from aiportal.planning.proximity import proximity_table
from aiportal.planning.resection import Plane, resect
from aiportal.planning.trajectory import TrajectoryPlanner, brute_force_clearance

CASES = {"abdomen_3mm": "example_seg.nii.gz", "chest_dicom_grid": "example_seg_dicom.nii.gz"}
AT_RISK = ["aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "kidney_right", "vertebrae_T12",
           "stomach", "gallbladder"]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, shared_data):
    folder = shared_data / "totalseg"
    grid = load_label_grid(folder / CASES[request.param], class_map=folder / "class_map_total_totalmr.json")
    return request.param, grid


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True, timeout=300)


def test_proximity_equals_brute_force(case):
    name, grid = case
    structures = [s for s in AT_RISK if s in grid.present_names()]
    assert len(structures) >= 4, (name, grid.present_names())
    liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver")))
    for row in proximity_table(grid, "liver", structures):
        brute = cKDTree(grid.ijk_to_ras_points(np.argwhere(grid.mask(row.structure)))).query(liver)[0].min()
        assert row.centre_distance_mm == pytest.approx(brute, abs=1e-3), (name, row.structure)
        assert 0.0 <= row.gap_mm <= row.centre_distance_mm


def test_resection_volumes_are_voxel_counts(case):
    name, grid = case
    liver = grid.mask("liver")
    centre = grid.ijk_to_ras_points(np.argwhere(liver)).mean(axis=0)
    result, resected = resect(grid, "liver", planes=[Plane(tuple(centre), (1.0, 0.0, 0.0))])
    assert result.organ_voxels == np.count_nonzero(liver)
    assert result.remnant_voxels == np.count_nonzero(liver & ~resected)
    assert result.organ_ml == pytest.approx(result.organ_voxels * grid.voxel_ml, abs=1e-3)
    assert result.remnant_percent == pytest.approx(100.0 * result.remnant_voxels / result.organ_voxels, abs=1e-3)
    assert 20.0 < result.remnant_percent < 80.0  # a plane through the centroid leaves a real remnant
    if name == "abdomen_3mm":
        assert result.organ_ml == pytest.approx(1043.118, abs=0.01)


def test_resection_by_a_drawn_surface_on_the_real_liver(case):
    """Points drawn on a curved cut (a cap of a 120 mm sphere through the liver's centre): the remnant is the
    liver's voxels on the kept side, every voxel farther than half a voxel from the true cap on its true side."""
    from aiportal.planning.surface_cut import CutSurface

    name, grid = case
    liver = grid.mask("liver")
    ras = grid.ijk_to_ras_points(np.argwhere(liver))
    centre = ras.mean(axis=0)
    cap_centre, radius = centre + np.array([120.0, 0.0, 0.0]), 120.0
    a, s = np.meshgrid(np.linspace(-90, 90, 9), np.linspace(-60, 60, 7))
    points = np.c_[cap_centre[0] - np.sqrt(radius ** 2 - a.ravel() ** 2 - s.ravel() ** 2),
                   centre[1] + a.ravel(), centre[2] + s.ravel()]
    result, resected = resect(grid, "liver", surface=CutSurface(points, side_ras=cap_centre))
    beyond = np.linalg.norm(ras - cap_centre, axis=1) - radius
    decided = np.abs(beyond) > max(grid.spacing_ijk) / 2.0
    assert np.array_equal(resected[liver][decided], (beyond < 0)[decided])
    assert result.remnant_voxels == np.count_nonzero(liver & ~resected)
    assert result.remnant_ml == pytest.approx(result.remnant_voxels * grid.voxel_ml, abs=1e-3)
    assert 20.0 < result.remnant_percent < 80.0, name


def test_trajectory_clearance_equals_brute_force(case):
    name, grid = case
    structures = [s for s in AT_RISK if s in grid.present_names()]
    planner = TrajectoryPlanner(grid, structures, default_threshold_mm=5.0)
    liver = grid.ijk_to_ras_points(np.argwhere(grid.mask("liver")))
    target = liver.mean(axis=0)
    entry = target + np.array([-80.0, 0.0, 0.0])  # from the patient's right, through the liver
    entry = grid.ijk_to_ras_points(np.clip(np.rint(grid.ras_to_kji(entry[None])), 0,
                                           np.array(grid.labels.shape) - 1))[0]
    report = planner.check(entry, target, tool_radius_mm=1.0)
    for row in report.structures:
        if not row.entered:
            brute = brute_force_clearance(grid, row.structure, entry, target) - 1.0
            assert row.clearance_mm == pytest.approx(brute, abs=1e-3), (name, row.structure)


def test_cli_bundle_and_errors(shared_data, tmp_path):
    folder = shared_data / "totalseg"
    seg = str(folder / "example_seg.nii.gz")
    class_map = ["--class-map", str(folder / "class_map_total_totalmr.json")]
    out = tmp_path / "bundle"
    done = _cli("plan", "bundle", seg, *class_map, "--out", str(out), "--target", "liver",
                "--structures", "aorta", "portal_vein_and_splenic_vein", "--threshold", "aorta=15",
                "--trajectory", "-100", "150", "120", "10", "180", "130", "--organ", "liver",
                "--plane", "40", "0", "0", "-1", "0", "0", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["resection"]["organ_ml"] == pytest.approx(1043.118, abs=0.01)
    assert any(row["alert"] for row in plan["proximity"])  # aorta is 10.8 mm (centres) from the liver
    for entry in plan["manifest"]["files"]:
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    paths = {entry["path"] for entry in plan["manifest"]["files"]}
    assert {"models/aorta.stl", "models/liver_resected.stl", "models/liver_remnant.stl", "measurements.csv",
            "markups/trajectory_1.mrk.json"} <= paths
    import vtk

    from aiportal.export.surfaces import surface_volume_mm3

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(out / "models" / "liver_remnant.stl"))
    reader.Update()
    assert surface_volume_mm3(reader.GetOutput()) / 1000.0 == pytest.approx(plan["resection"]["remnant_ml"], rel=0.01)
    markup = json.loads((out / "markups" / "trajectory_1.mrk.json").read_text())
    assert markup["markups"][0]["type"] == "Line" and len(markup["markups"][0]["controlPoints"]) == 2

    bad = _cli("plan", "proximity", seg, *class_map, "--target", "liver", "--structures", "heart")
    assert bad.returncode == 1 and "segment 'heart' in example_seg.nii.gz is empty" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    outside = _cli("plan", "trajectory", seg, *class_map, "--entry", "0", "0", "0", "--target", "0", "0", "900")
    assert outside.returncode == 1 and "leaves the image" in outside.stderr


def test_cli_outcome_and_angle(shared_data, tmp_path):
    folder = shared_data / "totalseg"
    seg = str(folder / "example_seg.nii.gz")
    class_map = ["--class-map", str(folder / "class_map_total_totalmr.json")]
    done = _cli("plan", "outcome", seg, *class_map, seg, "--structures", "liver", "aorta",
                "--planned-trajectory", "0", "0", "0", "0", "0", "50", "--actual-trajectory", "0", "3", "0", "0", "0",
                "54", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for row in result["structures"]:  # the same segmentation: no difference
        assert row["dice"] == 1.0 and row["hausdorff_mm"] == 0.0 and row["volume_change_percent"] == 0.0
    assert result["trajectory"]["entry_deviation_mm"] == 3.0 and result["trajectory"]["target_deviation_mm"] == 4.0
    angle = _cli("plan", "angle", "--plane", "0", "0", "0", "0", "0", "1", "--plane", "0", "0", "0", "0", "1", "1")
    assert angle.returncode == 0 and "plane-plane angle: 45.00°" in angle.stdout
