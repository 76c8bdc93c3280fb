"""Registration defaults: what ``metric="auto"`` picks on real pairs, and the loud warning when a result fails
its own independent check (re-optimisation from a perturbed start, edge-alignment sharpness).

The nibabel pair's truth: see test_registration.py (SPM's 4 mm copy of ``anatomical.nii`` moved by nibabel's
``euler2mat(0.1, 0.2, 0.3)`` and (3, 4, 5) mm). Errors are measured at the fixed volume's 8 corners, the
farthest points of the image from the rotation centre.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_registration import KNOWN_MOTION, rotation_error_deg

from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume
from aiportal.register import register_volumes


def corner_error_mm(fixed_node, estimated: np.ndarray, true: np.ndarray) -> float:
    size = np.array(array_from_volume(fixed_node).shape[::-1]) - 1
    corners = np.array([ijk_to_ras_matrix(fixed_node) @ [i, j, k, 1] for i in (0, size[0]) for j in (0, size[1])
                        for k in (0, size[2])])
    return float(np.linalg.norm((corners @ estimated.T - corners @ true.T)[:, :3], axis=1).max())


@pytest.fixture
def nibabel_pair(runtime, shared_data):
    folder = shared_data / "nibabel-moved"
    return (load_volume(folder / "anatomical.nii", runtime).node,
            load_volume(folder / "reoriented_anat_moved.nii", runtime).node)


def test_defaults_recover_the_known_nibabel_motion(nibabel_pair):
    fixed, moving = nibabel_pair
    result = register_volumes(fixed, moving)  # no options: what users run
    true = np.linalg.inv(KNOWN_MOTION)
    assert rotation_error_deg(result.matrix_ras, true) <= 0.5  # measured 0.41° (mutual information alone: 2.40°)
    assert corner_error_mm(fixed, result.matrix_ras, true) <= 1.0  # measured 0.82 mm (MI alone: 2.47 mm)
    assert result.metric == "mean_squares" and result.metric_choice.metric == "mean_squares"
    assert "same contrast" in result.metric_choice.reason
    summary = result.summary()
    assert summary["consistency_check"]["passed"] and summary["edge_alignment_check"]["passed"]
    assert result.warnings == []


def test_unrelated_images_are_flagged_loudly(shared_data, tmp_path):
    ct = shared_data / "totalseg" / "example_ct_sm.nii.gz"  # an abdominal CT: nothing in common with a head MR
    head = shared_data / "nibabel-moved" / "anatomical.nii"
    out = tmp_path / "reg"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(ct), str(head), "--no-resample",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING: unreliable" in done.stdout
    record = json.loads((out / "registration.json").read_text())
    assert record["warnings"] and all(w.startswith("unreliable") for w in record["warnings"])
    assert not (record["consistency_check"]["passed"] and record["edge_alignment_check"]["passed"])
    assert record["metric_choice"]["picked"] == "mutual_information"  # intensities do not correlate



def test_dicom_modality_tags_decide_before_the_intensities(runtime, shared_data):
    from aiportal.register.auto import choose_metric, modality

    ct = load_volume(shared_data / "totalseg" / "example_ct_dicom", runtime).node
    assert modality(ct) == "CT"  # load_volume keeps the series' Modality
    choice = choose_metric(ct, ct, None, None, None, None, None)  # the tags decide: no image is looked at
    assert choice.metric == "mean_squares" and "both CT" in choice.reason and choice.correlation is None
