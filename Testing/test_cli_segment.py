"""End to end: `aiportal segment` on real CT in three formats, provenance on disk, bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vtk

from aiportal.cli import main
from aiportal.errors import CancelledError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, nearest_on_grid, save_volume
from aiportal.models.totalseg_labels import read_class_map_json
from aiportal.provenance import Provenance
from aiportal.segment import SegmentationJob
from aiportal.segmentation import load_segmentation, segment_ids
from aiportal.terminology import deserialize

LUNG_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
              "lung_middle_lobe_right", "lung_lower_lobe_right")


def _labels(out: Path, runtime):
    loaded = load_volume(out / "labels.nrrd", runtime)
    return array_from_volume(loaded.node), ijk_to_ras_matrix(loaded.node)


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def dicom_outputs(shared_data, tmp_path_factory):
    """classic-ct on the real DICOM series, and on NIfTI and NRRD copies of the same image."""
    from aiportal.runtime import build_headless_runtime

    base = tmp_path_factory.mktemp("segment")
    series = shared_data / "totalseg/example_ct_dicom"
    rt = build_headless_runtime()
    loaded = load_volume(series, rt)
    inputs = {"dicom": series,
              "nifti": save_volume(loaded.node, base / "ct.nii.gz"),
              "nrrd": save_volume(loaded.node, base / "ct.nrrd")}
    for kind, path in inputs.items():
        assert main(["segment", str(path), "--model", "classic-ct", "--out", str(base / kind)]) == 0
    return base


def test_dicom_nifti_nrrd_give_identical_segmentations(dicom_outputs, runtime):
    dicom_labels, dicom_grid = _labels(dicom_outputs / "dicom", runtime)
    assert set(np.unique(dicom_labels)) >= {1, 5}  # body and bone on this upper abdomen
    for kind in ("nifti", "nrrd"):
        labels, grid = _labels(dicom_outputs / kind, runtime)
        assert np.allclose(grid, dicom_grid, atol=1e-4), kind
        assert np.array_equal(labels, dicom_labels), kind


def test_dicom_result_agrees_with_totalsegmentator(dicom_outputs, shared_data, runtime):
    labels, grid = _labels(dicom_outputs / "dicom", runtime)
    reference = load_volume(shared_data / "totalseg/example_seg_dicom.nii.gz", runtime)
    ref = array_from_volume(reference.node)
    ours, _ = nearest_on_grid(labels, grid, ref.shape, ijk_to_ras_matrix(reference.node))
    names = {name: value for value, name in read_class_map_json(
        shared_data / "totalseg/class_map_total_totalmr.json", "total").items()}
    # this series lies below the lungs (the reference has no lobe): stomach gas must not become lung
    assert not np.isin(ref, [names[n] for n in LUNG_LOBES]).any()
    voxel_ml = np.prod(np.linalg.norm(grid[:3, :3], axis=0)) / 1000
    assert np.count_nonzero(np.isin(labels, [2, 3])) * voxel_ml < 20
    bones = [v for n, v in names.items() if n.startswith(("vertebrae", "rib", "hip", "femur", "sacrum",
                                                          "sternum", "scapula", "clavicula", "humerus", "skull"))]
    assert _dice(ours == 5, np.isin(ref, bones)) >= 0.75


def test_seg_nrrd_reloads_with_names_colours_terminology_provenance(dicom_outputs, runtime):
    import json

    node = load_segmentation(dicom_outputs / "dicom" / "segmentation.seg.nrrd", runtime)
    run = json.loads((dicom_outputs / "dicom" / "run.json").read_text())
    from aiportal.models.catalog import get_catalog

    labels = {label.name: label for label in get_catalog().get("classic-ct").labels}
    segmentation = node.GetSegmentation()
    names = [segmentation.GetSegment(s).GetName() for s in segment_ids(node)]
    assert {"Body", "Bone"} <= set(names)
    for segment_id in segment_ids(node):
        segment = segmentation.GetSegment(segment_id)
        label = labels[segment.GetName()]
        assert np.allclose(segment.GetColor(), np.array(label.color) / 255, atol=1e-3)
        assert deserialize(segment.GetTerminology()).type == label.type
        provenance = Provenance.of_segment(segment)
        assert provenance.model_id == "classic-ct" and provenance.weights_sha256 == "none"
        assert provenance.run_id == run["provenance"]["run_id"] and provenance.device == "cpu"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True,
                          timeout=300)


def _bad_inputs(shared_data: Path, tmp: Path) -> dict[str, Path]:
    empty = tmp / "empty"
    empty.mkdir()
    text = tmp / "notes"
    text.mkdir()
    (text / "readme.txt").write_text("not an image")
    (text / "scan.dcm").write_bytes(b"\x00" * 300)
    mixed = tmp / "mixed"
    shutil.copytree(shared_data / "totalseg/example_ct_dicom", mixed)
    for file in (shared_data / "dcmqi/data/segmentations/ct-3slice").iterdir():
        shutil.copy(file, mixed / f"other-{file.name}")
    truncated = tmp / "truncated"
    shutil.copytree(shared_data / "totalseg/example_ct_dicom", truncated)
    victim = sorted(truncated.iterdir())[7]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return {"empty folder": empty, "non-image files": text, "mixed series": mixed,
            "truncated DICOM": truncated, "MR given to classic-ct": shared_data / "totalseg/example_mr_sm.nii.gz",
            "missing path": tmp / "does-not-exist"}


@pytest.mark.parametrize("case", ["empty folder", "non-image files", "mixed series", "truncated DICOM",
                                  "MR given to classic-ct", "missing path"])
def test_bad_input_fails_clearly_and_writes_nothing(shared_data, tmp_path, case):
    bad = _bad_inputs(shared_data, tmp_path)[case]
    out = tmp_path / "out"
    done = _run_cli("segment", str(bad), "--model", "classic-ct", "--out", str(out))
    assert done.returncode != 0
    progress = re.compile(r"^\s*\d+% ")  # plain progress lines (stderr is not a terminal here)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not progress.match(line)]
    assert len(lines) == 1, done.stderr  # one clear line, no traceback, no library noise
    assert lines[0].startswith("aiportal: error:")
    named = bad.name if case != "truncated DICOM" else sorted(bad.iterdir())[7].name
    assert named in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_existing_results_are_never_overwritten(dicom_outputs):
    out = dicom_outputs / "dicom"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = _run_cli("segment", str(dicom_outputs / "ct.nrrd"), "--out", str(out))
    assert done.returncode == 1 and "--overwrite" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_cancel_stops_the_model_and_creates_nothing(shared_data, runtime):
    volume = load_volume(shared_data / "totalseg/example_ct.nii.gz", runtime).node
    job = SegmentationJob(volume, "classic-ct", runtime=runtime)
    before = runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(CancelledError):
        job.run(progress=lambda fraction, stage: job.cancel())
    assert job.poll().state == "cancelled"
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before


def test_info_lists_the_embedded_model():
    done = _run_cli("info")
    assert done.returncode == 0
    assert "classic-ct" in done.stdout and "does not:" in done.stdout and "cpu" in done.stdout


def test_each_run_is_audited_and_the_cli_detects_tampering(dicom_outputs, tmp_path):
    import json
    import os

    run = json.loads((dicom_outputs / "dicom" / "run.json").read_text())
    log = Path(os.environ["AIPORTAL_AUDIT_LOG"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    ours = [r for r in records if r["run_id"] == run["provenance"]["run_id"]]
    assert [r["event"] for r in ours] == ["ai_run", "export"]
    assert ours[0]["model_id"] == "classic-ct" and ours[0]["weights_sha256"] == "none"
    assert {Path(o["path"]).name for o in ours[1]["outputs"]} >= {"segmentation.seg.nrrd", "segments.json"}
    assert "PatientName" not in json.dumps(ours)

    copy = tmp_path / "audit.jsonl"
    copy.write_text(log.read_text())
    (tmp_path / "audit.jsonl.head").write_text(log.with_name(log.name + ".head").read_text())
    from aiportal.audit_chain import anchor_path

    anchor_path(copy).write_text(anchor_path(log).read_text())  # a copied log comes with its anchor
    assert _run_cli("audit", "--log", str(copy), "verify").returncode == 0
    done = _run_cli("audit", "--log", str(copy), "review", ours[0]["run_id"], "Bone", "accepted", "--user", "dr-a")
    assert done.returncode == 0
    shown = json.loads(_run_cli("audit", "--log", str(copy), "--run", ours[0]["run_id"], "--json").stdout)
    assert [r["event"] for r in shown] == ["ai_run", "export", "review"] and shown[2]["user"] == "dr-a"
    copy.write_text(copy.read_text().replace('"classic-ct"', '"other-model"', 1))
    done = _run_cli("audit", "--log", str(copy), "verify")
    assert done.returncode == 1 and "is TAMPERED" in done.stderr


def test_every_format_from_the_cli_and_export_of_an_existing_segmentation(shared_data, tmp_path):
    import highdicom as hd
    from dicom_validation import dciodvfy_errors

    series = shared_data / "totalseg/example_ct_dicom"
    everything = "nrrd,json,csv,seg,sr,stl,obj"
    refused = _run_cli("segment", str(series), "--formats", everything, "--out", str(tmp_path / "refused"))
    assert refused.returncode == 1 and "--assign-uids" in refused.stderr
    assert "lungs" not in refused.stderr  # refused before the model ran, not after
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "all"
    done = _run_cli("segment", str(series), "--formats", everything, "--assign-uids", "--out", str(out))
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"segmentation.seg.nrrd", "labels.nrrd", "segments.json", "statistics.csv", "segmentation.dcm",
            "measurements.dcm", "source", "surfaces", "run.json"} <= names
    assert {p.suffix for p in (out / "surfaces").iterdir()} >= {".stl", ".obj"}
    for dicom in (out / "segmentation.dcm", out / "measurements.dcm"):
        assert dciodvfy_errors(dicom) == [], dicom
    seg = hd.seg.segread(out / "segmentation.dcm")
    copy_uids = {hd.imread(p).SOPInstanceUID for p in (out / "source").rglob("*") if p.is_file()}
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= copy_uids  # the SEG references the corrected copy written beside it

    again = tmp_path / "again"
    done = _run_cli("export", str(out / "segmentation.seg.nrrd"), "--source", str(out / "source"),
                    "--formats", "seg,sr,stl", "--slicer-surfaces", "--out", str(again))
    assert done.returncode == 0, done.stderr
    # STL volumes: volume-true by default (= statistics.csv), Slicer's 3D-view surfaces on request (smaller)
    import csv

    from aiportal.export.surfaces import safe_file_stem, surface_volume_mm3

    def stl_ml(path):
        reader = vtk.vtkSTLReader()
        reader.SetFileName(str(path))
        reader.Update()
        return surface_volume_mm3(reader.GetOutput()) / 1000

    with (out / "statistics.csv").open() as table:
        volumes = {row["Segment"]: float(row["Volume (mL)"]) for row in csv.DictReader(table)}
    bone = safe_file_stem("Bone")
    assert stl_ml(out / "surfaces" / f"{bone}.stl") == pytest.approx(volumes["Bone"], rel=0.002)
    assert stl_ml(again / "surfaces" / f"{bone}.stl") < 0.99 * volumes["Bone"]  # measured -2.1 %
    reexported = hd.seg.segread(again / "segmentation.dcm")
    assert [s.TrackingUID for s in reexported.SegmentSequence] == [s.TrackingUID for s in seg.SegmentSequence]
    wrong_grid = _run_cli("export", str(out / "segmentation.seg.nrrd"), "--source",
                          str(shared_data / "totalseg/example_ct.nii.gz"), "--formats", "nrrd",
                          "--out", str(tmp_path / "wrong"))
    assert wrong_grid.returncode == 1 and "grid" in wrong_grid.stderr
