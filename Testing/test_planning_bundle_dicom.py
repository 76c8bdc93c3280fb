"""The plan bundle's DICOM SEG and TID 1500 SR on TotalSegmentator's real 20-slice CT series (empty UIDs,
assigned with --assign-uids): both pass dciodvfy with zero errors, the SEG holds exactly the planned
voxels (remnant and resected parts included, at the same RAS positions), the SR measures the SEG's
segments, and the manifest lists every file with its SHA-256. A label map on another grid is refused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import highdicom as hd
import numpy as np
import pytest
from dicom_validation import dciodvfy_errors
from test_dicom_export import seg_masks

from aiportal.export.dicom_source import export_source
from aiportal.io.volumes import ijk_to_ras_matrix, load_volume
from aiportal.planning.grid import load_label_grid
from aiportal.planning.resection import Plane, resect


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True, timeout=600)


def _centroid_ras(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)[:, ::-1].mean(axis=0)
    return ijk_to_ras[:3, :3] @ ijk + ijk_to_ras[:3, 3]


def test_bundle_seg_and_sr_on_the_real_series(shared_data, runtime, tmp_path):
    folder = shared_data / "totalseg"
    labels, class_map, series = (folder / "example_seg_dicom.nii.gz", folder / "class_map_total_totalmr.json",
                                 folder / "example_ct_dicom")
    out = tmp_path / "bundle"
    plane = ["0", "0", "0", "1", "0", "0"]
    done = _cli("plan", "bundle", str(labels), "--class-map", str(class_map), "--out", str(out), "--target", "liver",
                "--structures", "aorta", "stomach", "--organ", "liver", "--plane", *plane, "--dicom", str(series),
                "--assign-uids", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads((out / "plan.json").read_text())
    listed = {entry["path"]: entry["sha256"] for entry in plan["manifest"]["files"]}
    assert {"dicom/segmentation.dcm", "dicom/measurements.dcm"} <= set(listed)
    for path, digest in listed.items():
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == digest
    assert dciodvfy_errors(out / "dicom" / "segmentation.dcm") == []
    assert dciodvfy_errors(out / "dicom" / "measurements.dcm") == []

    # the SEG holds the planned voxels: same counts, same RAS centroids as the label map's
    grid = load_label_grid(labels, class_map=class_map)
    _, resected = resect(grid, "liver", planes=[Plane((0, 0, 0), (1, 0, 0))])
    liver = grid.mask("liver")
    expected = {"aorta": grid.mask("aorta"), "stomach": grid.mask("stomach"), "liver resected": liver & resected,
                "liver remnant": liver & ~resected}
    ct = load_volume(series, runtime)
    source = export_source(ct.source, ct.node, assign_missing_uids=True, corrected_copy_folder=tmp_path / "uids")
    masks = seg_masks(out / "dicom" / "segmentation.dcm", source.sop_instance_uids)
    assert set(masks) == set(expected)
    for name, mask in expected.items():
        assert int(masks[name].sum()) == int(mask.sum()), name
        assert np.allclose(_centroid_ras(masks[name], ijk_to_ras_matrix(ct.node)),
                           _centroid_ras(mask, grid.ijk_to_ras), atol=1e-3), name
    seg = hd.seg.segread(out / "dicom" / "segmentation.dcm")
    liver_type = next(seg.get_segment_description(n).segmented_property_type.meaning
                      for n in seg.segment_numbers if seg.get_segment_description(n).segment_label == "liver remnant")
    assert liver_type == "Liver"  # a part keeps its organ's SNOMED code

    sr = hd.sr.srread(out / "dicom" / "measurements.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    by_name = {str(g.tracking_identifier).rsplit(" #", 1)[0]: g for g in groups}  # "liver remnant #3"
    assert sorted(by_name) == sorted(expected)
    remnant = by_name["liver remnant"]
    volume = next(m for m in remnant.get_measurements() if m.name.meaning == "Volume")
    scale = {"mL": 1.0, "cm3": 1.0, "mm3": 1e-3}[volume.unit.value]
    assert volume.value * scale == pytest.approx(plan["resection"]["remnant_ml"], rel=1e-3)


def test_bundle_refuses_a_label_map_off_the_series_grid(shared_data, tmp_path):
    folder = shared_data / "totalseg"
    done = _cli("plan", "bundle", str(folder / "example_seg.nii.gz"), "--class-map",
                str(folder / "class_map_total_totalmr.json"), "--out", str(tmp_path / "b"), "--segments", "liver",
                "--dicom", str(folder / "example_ct_dicom"), "--assign-uids")
    assert done.returncode == 1 and "is not on the voxel grid of the DICOM series" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
