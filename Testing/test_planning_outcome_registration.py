"""Plan vs outcome with the post-operative CT registered to the planning CT, on real data with a known motion.

TotalSegmentator's real 3 mm abdomen CT and its reference segmentation are moved together by a known
rigid transform (rotation about three axes, translation; written into the NIfTI headers, so the voxels
are the same and the post-operative frame differs from the planning one). ``plan outcome`` registers
the moved CT back (rigid, the project's registration): the recovered matrix is the inverse motion,
every structure's surfaces coincide again (mean surface distance and Hausdorff under a voxel), and a
trajectory and a cut plane given in the post-operative frame land on the planned ones. Without
registration the same comparison is off by the motion (so the check can fail), with a WARNING.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

STRUCTURES = ["liver", "aorta", "kidney_right", "kidney_left", "portal_vein_and_splenic_vein", "vertebrae_L1"]
ROTATION_RAD = (0.05, -0.04, 0.06)
TRANSLATION_MM = (5.0, -3.0, 4.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True, timeout=600)


def _motion() -> np.ndarray:
    """Planning RAS → post-operative RAS."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", ROTATION_RAD).as_matrix()
    motion[:3, 3] = TRANSLATION_MM
    return motion


def write_postop_case(shared_data, out) -> Path:
    """The real CT and its reference segmentation, same voxels, moved by :func:`_motion` in their headers, into
    ``out``; returns the planning folder they came from."""
    folder = shared_data / "totalseg"
    motion = _motion()
    for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz"):
        image = nib.load(folder / name)
        moved = nib.Nifti1Image(np.asanyarray(image.dataobj), motion @ image.affine, image.header)
        moved.set_qform(motion @ image.affine, code=1)
        moved.set_sform(motion @ image.affine, code=1)
        nib.save(moved, out / name)
    return folder


@pytest.fixture(scope="module")
def moved_case(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("postop")
    return write_postop_case(shared_data, out), out


def _apply(matrix: np.ndarray, point) -> list[str]:
    return [f"{v:.4f}" for v in matrix[:3, :3] @ np.asarray(point, float) + matrix[:3, 3]]


def test_outcome_registers_a_known_rigid_motion_away(moved_case):
    folder, out = moved_case
    motion = _motion()
    entry, target = [-100.0, 150.0, 120.0], [10.0, 180.0, 130.0]
    plane_point, plane_normal = [40.0, 160.0, 120.0], np.array([-1.0, 0.2, 0.1])
    common = [str(folder / "example_seg.nii.gz"), "--class-map", str(folder / "class_map_total_totalmr.json"),
              str(out / "example_seg.nii.gz"), "--structures", *STRUCTURES,
              "--planned-trajectory", *map(str, entry + target),
              "--actual-trajectory", *_apply(motion, entry), *_apply(motion, target),
              "--planned-plane", *map(str, plane_point + plane_normal.tolist()),
              "--actual-plane", *_apply(motion, plane_point), *[f"{v:.6f}" for v in motion[:3, :3] @ plane_normal],
              "--json"]
    done = _cli("plan", "outcome", *common, "--planned-image", str(folder / "example_ct_sm.nii.gz"),
                "--actual-image", str(out / "example_ct_sm.nii.gz"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["frame"]["registered"]
    recovered = np.array(result["frame"]["actual_to_planned_ras"])
    residual = recovered @ motion  # identity when the motion is undone
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 0.3
    assert np.linalg.norm(residual[:3, 3]) < 1.0
    for row in result["structures"]:
        assert row["mean_surface_distance_mm"] < 0.5 and row["hausdorff_mm"] <= 3.0 + 1e-6, row  # a voxel: 3 mm
        assert row["volume_change_percent"] == 0.0 and row["dice"] is None
    assert result["trajectory"]["entry_deviation_mm"] < 1.0 and result["trajectory"]["target_deviation_mm"] < 1.0
    assert result["trajectory"]["angle_deg"] < 0.3
    assert result["plane"]["angle_deg"] < 0.3 and abs(result["plane"]["offset_mm"]) < 1.0

    unregistered = _cli("plan", "outcome", *common[:-1], "--register", "no", "--planned-image",
                        str(folder / "example_ct_sm.nii.gz"), "--actual-image", str(out / "example_ct_sm.nii.gz"))
    assert unregistered.returncode == 0, unregistered.stderr
    assert "not registered" in unregistered.stdout
    none_given = _cli("plan", "outcome", *common[:-1])
    assert "WARNING: not registered" in none_given.stdout
    assert "trajectory: entry_deviation_mm" in none_given.stdout
    far = [float(line.split("mean surface ")[1].split(" mm")[0]) for line in none_given.stdout.splitlines()
           if "mean surface" in line]
    assert len(far) == len(STRUCTURES) and min(far) > 3.0  # the motion itself: the check can fail


def test_outcome_needs_both_images(moved_case):
    folder, out = moved_case
    done = _cli("plan", "outcome", str(folder / "example_seg.nii.gz"), "--class-map",
                str(folder / "class_map_total_totalmr.json"), str(out / "example_seg.nii.gz"),
                "--planned-image", str(folder / "example_ct_sm.nii.gz"))
    assert done.returncode == 1 and "registration needs both images" in done.stderr
