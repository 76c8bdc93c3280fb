"""`aiportal followup --pacs`: a real Orthanc holds one patient's CT at three time points (a crop of
TotalSegmentator's real example series; the later studies moved by known rigid motions onto their own frame
of reference) with real lesion shapes (pyradiomics labels) shrunk, grown, removed and added by known amounts,
each with its DICOM SEG, plus an older study without a SEG. The pipeline finds the priors itself, registers
them, tracks every lesion, and its response and per-lesion changes equal an independent computation."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from dicom_validation import dciodvfy_errors  # noqa: E402
from orthanc_server import OrthancServer, missing_requirements  # noqa: E402
from test_followup_tracking import IN_PLANE, _groups, _tracking, place, real_lesion  # noqa: E402
from test_pacs import _endpoint  # noqa: E402
from test_recist import _segmentation  # noqa: E402

from aiportal.errors import AIPortalError  # noqa: E402
from aiportal.export.dicom_seg import write_seg  # noqa: E402
from aiportal.export.dicom_source import export_source  # noqa: E402
from aiportal.followup.cli import cmd_followup  # noqa: E402
from aiportal.followup.tracking import BASELINE, GONE, NEW, PRESENT  # noqa: E402
from aiportal.io.volumes import ijk_to_ras_matrix, load_volume  # noqa: E402
from aiportal.measure.recist import measure_lesions  # noqa: E402
from aiportal.measure.response import classify_response  # noqa: E402
from aiportal.models.catalog import Code, LabelSpec  # noqa: E402
from aiportal.pacs import PacsError  # noqa: E402
from aiportal.pacs.config import add_endpoint  # noqa: E402
from aiportal.segmentation import segment_ids  # noqa: E402
from aiportal.terminology import serialize  # noqa: E402

PATIENT = "FOLLOWUP-001"
CROP = (slice(None), slice(150, 330), slice(110, 290))  # k, rows, columns: 20 x 180 x 180
LESION = LabelSpec(1, "lesion", Code("SCT", "49755003", "Morphologically Altered Structure"),
                   Code("SCT", "52988006", "Lesion"))


def _rigid(degrees: float, shift_mm) -> np.ndarray:
    """A rotation about the patient's z axis and a shift (LPS, mm)."""
    angle = math.radians(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    matrix[:3, 3] = shift_mm
    return matrix


DATES = ("20240101", "20240401", "20240701")


def three_time_points(shared_data) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """The three-time-point case: real lesion shapes per study date (one shrinks and vanishes, one grows,
    one is new at the last) and each study's known rigid motion."""
    shape = (20, CROP[1].stop - CROP[1].start, CROP[2].stop - CROP[2].start)
    a, b, c = (real_lesion(shared_data, "brain1"), real_lesion(shared_data, "brain2"),
               real_lesion(shared_data, "brain1", largest=False))
    lesion_a, lesion_b = place(shape, a, (4, 30, 30)), place(shape, b, (6, 100, 110))
    masks = [[lesion_a, lesion_b], [ndimage.binary_erosion(lesion_a, IN_PLANE, iterations=2)],
             [ndimage.binary_dilation(lesion_a, IN_PLANE, iterations=3), place(shape, c, (10, 130, 20))]]
    motions = [_rigid(0, (0, 0, 0)), _rigid(3.0, (6, -4, 2)), _rigid(-4.0, (-5, 7, -3))]
    return dict(zip(DATES, masks, strict=True)), dict(zip(DATES, motions, strict=True))


def _study(source: Path, out: Path, *, date: str, motion: np.ndarray, patient: str = PATIENT) -> Path:
    """The cropped real CT, uncompressed, as a new study on its own frame of reference moved by ``motion``."""
    out.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[CROP[1:]]
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3)
        spacing = [float(v) for v in ds.PixelSpacing]
        corner = (np.array([float(v) for v in ds.ImagePositionPatient]) + CROP[1].start * spacing[0] * orientation[1]
                  + CROP[2].start * spacing[1] * orientation[0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in (motion @ np.append(corner, 1.0))[:3]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (motion[:3, :3] @ orientation.T).T.ravel()]
        ds.PixelData, ds.Rows, ds.Columns = np.ascontiguousarray(pixels).tobytes(), pixels.shape[0], pixels.shape[1]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.SeriesDate = patient, "Follow^Up", date, date
        ds.StudyDescription, ds.StudyID, ds.SeriesNumber = "CT abdomen", "1", 1
        ds.AccessionNumber = f"ACC{date}"
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out


def _with_seg(runtime, folder: Path, masks: list[np.ndarray]) -> Path:
    loaded = load_volume(folder, runtime)
    labels = sum(m.astype(np.uint8) * (n + 1) for n, m in enumerate(masks))
    node = _segmentation(runtime, labels, loaded.node)
    for n, segment_id in enumerate(segment_ids(node)):
        segment = node.GetSegmentation().GetSegment(segment_id)
        segment.SetName(f"lesion {n + 1}")
        segment.SetTerminology(serialize(LESION))
    write_seg(node, loaded.node, export_source(loaded.source, loaded.node), folder / "seg.dcm")
    return folder


@pytest.fixture(scope="module")
def pacs(shared_data, tmp_path_factory):
    from aiportal.runtime import build_headless_runtime

    missing = missing_requirements()
    if missing:
        pytest.fail(f"needs Debian's orthanc and orthanc-dicomweb and gcc; missing: {missing}")
    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("followup")
    source = shared_data / "totalseg" / "example_ct_dicom"
    masks, motions = three_time_points(shared_data)
    folders = {date: _with_seg(runtime, _study(source, root / date, date=date, motion=motions[date]), masks[date])
               for date in masks}
    no_seg = _study(source, root / "20230601", date="20230601", motion=_rigid(2.0, (3, 3, 0)))
    lonely = _study(source, root / "lonely", date="20240701", motion=np.eye(4), patient="FOLLOWUP-ALONE")
    server = OrthancServer(root / "orthanc").start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIPORTAL_PACS_CONFIG", str(root / "config" / "pacs.json"))
        patch.setenv("AIPORTAL_TEST_ORTHANC_PASSWORD", server.password)
        try:
            for folder in [*folders.values(), no_seg, lonely]:
                server.upload(sorted(folder.glob("*.dcm")))
            add_endpoint(_endpoint(server, "followup-pacs"))
            add_endpoint(_endpoint(server, "followup-down", dicomweb_url="http://127.0.0.1:9/dicom-web", dimse=None,
                                   retries=0))
            uid = {date: str(pydicom.dcmread(next(f.glob("seg.dcm"))).StudyInstanceUID) for date, f in folders.items()}
            alone = str(pydicom.dcmread(next(lonely.glob("*.dcm"))).StudyInstanceUID)
            yield argparse.Namespace(runtime=runtime, folders=folders, masks=masks, uid=uid, root=root,
                                     motions=motions, lonely=alone)
        finally:
            server.stop()
            runtime.scene.Clear(1)


def _args(out: Path, **values) -> argparse.Namespace:
    defaults = {"current": None, "prior": [], "pacs": "followup-pacs", "study": None, "protocol": "dicomweb",
                "description": "", "max_priors": 3, "out": out, "organ": [], "lymph_node": [], "no_register": False,
                "deidentify": False}
    return argparse.Namespace(**{**defaults, **values})


def test_priors_found_registered_tracked_and_response(pacs, tmp_path, capsys):
    args = _args(tmp_path / "out", study=pacs.uid["20240701"])
    assert cmd_followup(args) == 0
    result = args.followup_run.result
    assert result.labels == ["20240101", "20240401", "20240701"]
    assert "20230601" in next(iter(result.excluded.values()))  # the 2023 study has no SEG: left out, said why
    assert "has no DICOM SEG" in next(iter(result.excluded.values()))
    statuses = [[s.status if s else None for s in t.states] for t in result.tracks]
    assert statuses == [[BASELINE, PRESENT, PRESENT], [BASELINE, GONE, GONE], [None, None, NEW]]
    assert not result.notes, result.notes  # no registration warning
    # each lesion keeps the Tracking UID its first SEG gave it (the SR made with that SEG carries it too)
    first_seg = {date: [str(item.TrackingUID) for item in pydicom.dcmread(folder / "seg.dcm").SegmentSequence]
                 for date, folder in pacs.folders.items()}
    assert [t.tracking_uid for t in result.tracks] == [*first_seg["20240101"], first_seg["20240701"][1]]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the motions are in LPS, the registration maps RAS -> RAS
    for summary, date in zip(result.registrations[:2], ("20240101", "20240401"), strict=True):
        known = flip @ pacs.motions["20240701"] @ np.linalg.inv(pacs.motions[date]) @ flip
        found = np.array(summary["moving_to_fixed_ras"])
        ijk_to_ras = ijk_to_ras_matrix(load_volume(pacs.folders["20240701"], pacs.runtime).node)
        corners = ijk_to_ras @ np.array([[i, j, k, 1.0] for i in (0, 179) for j in (0, 179) for k in (0, 19)]).T
        error_mm = np.linalg.norm((found @ corners - known @ corners)[:3], axis=0).max()
        assert error_mm < 1.0, (date, error_mm)  # the known rigid motion recovered
    # independent: each known mask measured alone on its own study, RECIST rules applied by hand
    runtime = pacs.runtime
    measured = {}
    for date, folder in pacs.folders.items():
        volume = load_volume(folder, runtime).node
        measured[date] = []
        for mask in pacs.masks[date]:
            node = _segmentation(runtime, mask.astype(np.uint8), volume)
            measured[date].append(measure_lesions(node, segment_ids(node)[0], volume).measurements[0])
    sums = [measured["20240101"][0].long_axis_mm + measured["20240101"][1].long_axis_mm,
            measured["20240401"][0].long_axis_mm, measured["20240701"][0].long_axis_mm]
    assert result.sums_mm == pytest.approx(sums, abs=1e-6)
    assert result.responses[1] == classify_response(sums[0], sums[0], sums[1])
    assert result.responses[2] == classify_response(sums[0], min(sums[:2]), sums[2], new_lesions=True)
    document = json.loads((tmp_path / "out" / "followup.json").read_text())
    row = next(r for r in document["rows"] if r["tracking_id"] == "Lesion 1" and r["index"] == 2)
    assert row["volume_change_from_baseline_ml"] == pytest.approx(
        measured["20240701"][0].volume_ml - measured["20240101"][0].volume_ml, abs=1e-9)
    out = capsys.readouterr().out
    print(out)  # the CLI's lines, with its timings (pytest -s shows them)
    assert "Progressive disease" in out and "left out" in out
    srs = sorted((tmp_path / "out").glob("sr_*.dcm"))
    assert len(srs) == 3 and all(dciodvfy_errors(path) == [] for path in srs)
    tracked = {}
    for path in srs:
        for group in _groups(pydicom.dcmread(path)):
            identifier, uid = _tracking(group)
            assert tracked.setdefault(identifier, uid) == uid
    assert tracked == {t.tracking_id: t.tracking_uid for t in result.tracks}
    # each lesion's group references its segment in the SEG of its own time point, which is in the evidence
    segments = {"20240101": {"Lesion 1": 1, "Lesion 2": 2}, "20240401": {"Lesion 1": 1},
                "20240701": {"Lesion 1": 1, "Lesion 3": 2}}
    for path, date in zip(srs, segments, strict=True):
        sr = pydicom.dcmread(path)
        seg_uid = str(pydicom.dcmread(pacs.folders[date] / "seg.dcm", stop_before_pixels=True).SOPInstanceUID)
        referenced = {}
        for group in _groups(sr):
            identifier, _ = _tracking(group)
            for item in group.ContentSequence:
                if item.ConceptNameCodeSequence[0].CodeValue == "121191":  # Referenced Segment
                    reference = item.ReferencedSOPSequence[0]
                    assert str(reference.ReferencedSOPInstanceUID) == seg_uid
                    referenced[identifier] = int(reference.ReferencedSegmentNumber)
        assert referenced == segments[date], path.name
        evidence = {str(i.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert seg_uid in evidence


def test_no_prior_unreachable_pacs_and_other_frame(pacs, tmp_path):
    with pytest.raises(PacsError, match="No prior study of patient FOLLOWUP-ALONE"):
        cmd_followup(_args(tmp_path / "a", study=pacs.lonely))
    with pytest.raises(PacsError, match="followup-down"):
        cmd_followup(_args(tmp_path / "b", study=pacs.uid["20240701"], pacs="followup-down"))
    # every prior lies on another frame of reference: without registration none can be followed
    with pytest.raises(AIPortalError, match="another frame of reference"):
        cmd_followup(_args(tmp_path / "c", study=pacs.uid["20240701"], no_register=True))


def test_local_folders_through_the_cli(pacs, tmp_path):
    """`aiportal followup --current DIR --prior DIR` in its own process, with a prior that has no SEG."""
    import os
    import subprocess

    no_seg = pacs.root / "20230601"
    command = [sys.executable, "-m", "aiportal.cli", "followup", "--current", str(pacs.folders["20240701"]),
               "--prior", str(pacs.folders["20240401"]), "--prior", str(no_seg), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert "20240401: sum" in done.stdout and "(baseline)" in done.stdout
    assert f"left out {no_seg.name}: Study 20230601" in done.stdout and str(no_seg) not in done.stdout
    document = json.loads((tmp_path / "out" / "followup.json").read_text())
    assert document["time_points"] == ["20240401", "20240701"]
    # the 2024-04 study is the baseline here: its one lesion grew (dilated by 5 voxels in-plane) and a new one came
    assert [r.get("response") for r in document["responses"]] == [None, "PD"]
    done = subprocess.run([*command[:5], str(no_seg), "--prior", str(pacs.folders["20240401"]), "--out",
                           str(tmp_path / "bad")], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 1 and "has no DICOM SEG" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_prior_without_seg_segmented_by_the_model(pacs, tmp_path):
    """--segment-missing MODEL: the prior is segmented by the pipeline (audited, its SEG kept) and loaded as a
    time point; 'auto' takes the model named in the current study's SEG (a hand-made SEG names none)."""
    from aiportal.followup.load import model_of_seg, segment_and_load

    point = segment_and_load(pacs.root / "20230601", pacs.runtime, "classic-ct", tmp_path / "seg")
    assert point.label == "20230601" and model_of_seg(point.seg_path) == "classic-ct"
    names = {point.segmentation.GetSegmentation().GetSegment(s).GetName() for s in segment_ids(point.segmentation)}
    assert "body" in {name.lower() for name in names}, names
    assert dciodvfy_errors(point.seg_path) == []
    assert model_of_seg(pacs.folders["20240701"] / "seg.dcm") == ""


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_priors_found_by_qido_and_c_find_alike(pacs, protocol):
    from aiportal.followup.priors import find_priors
    from aiportal.pacs.config import get_endpoint

    current, priors, skipped = find_priors(get_endpoint("followup-pacs"), pacs.uid["20240701"], protocol=protocol)
    assert current.patient_id == PATIENT and current.study_date == "20240701"
    assert [p.study_date for p in priors] == ["20240401", "20240101", "20230601"] and not skipped
    _, priors, skipped = find_priors(get_endpoint("followup-pacs"), pacs.uid["20240401"], protocol=protocol,
                                     max_priors=1)
    assert [p.study_date for p in priors] == ["20240101"]
    assert sorted(skipped.values()) == ["dated 20240701, not before the current study (20240401)",
                                        "older than the 1 most recent priors"]


def test_deidentified_prior_pulls_stay_one_patient_with_dates_and_segs(pacs, tmp_path):
    """`--deidentify` (and a de-identifying server): every pulled time point goes through the PS3.15 profile with
    one mapping — one pseudonymous patient, dates gone from the files but kept as labels, each SEG still on its
    images — and the identified copies are deleted."""
    from aiportal.followup.load import NoSegmentation, load_time_point
    from aiportal.followup.priors import deidentify_pulled, pull_current_and_priors
    from aiportal.pacs.config import get_endpoint
    from aiportal.pacs.deidentify import ReidentificationMap

    pulled = pull_current_and_priors(get_endpoint("followup-pacs"), pacs.uid["20240701"], tmp_path / "pull",
                                     protocol="dicomweb")
    identified = [pulled.current, *pulled.priors]
    mapping = ReidentificationMap()
    clean = deidentify_pulled(pulled, tmp_path / "clean", mapping)
    assert not any(folder.exists() for folder in identified)
    folders = [clean.current, *clean.priors]
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for folder in folders for path in folder.rglob("*.dcm")]
    assert len({str(h.PatientID) for h in headers}) == 1 and str(headers[0].PatientID) != PATIENT
    assert not {str(h.PatientName) for h in headers} & {"Follow^Up"}
    assert not {str(h.get("StudyDate", "")) for h in headers} & {"20240701", "20240401", "20240101", "20230601"}
    assert not {str(h.StudyInstanceUID) for h in headers} & set(pacs.uid.values())
    assert list(clean.labels.values()) == ["20240701", "20240401", "20240101", "20230601"]
    for folder, date in zip(folders, clean.labels.values(), strict=True):
        if date == "20230601":
            with pytest.raises(NoSegmentation):
                load_time_point(folder, pacs.runtime, label=date)
            continue
        point = load_time_point(folder, pacs.runtime, label=date)  # its SEG references its de-identified images
        assert point.label == date and len(segment_ids(point.segmentation)) == len(pacs.masks[date])


def test_deidentified_follow_up_through_the_cli(pacs, tmp_path, capsys):
    """`aiportal followup --pacs --deidentify`: the same responses and lesions as without, on a pseudonymous
    patient; the SRs reference the de-identified SEGs (the mapping, owner-only, re-identifies them)."""
    import stat

    from aiportal.pacs.deidentify import ReidentificationMap

    args = _args(tmp_path / "out", study=pacs.uid["20240701"], deidentify=True)
    assert cmd_followup(args) == 0
    print(capsys.readouterr().out)  # the CLI's lines, with its timings (pytest -s shows them)
    result = args.followup_run.result
    assert result.labels == ["20240101", "20240401", "20240701"]
    assert [a.response.name for a in result.responses[1:]] == ["PR", "PD"]
    assert [[s.status if s else None for s in t.states] for t in result.tracks] == [
        [BASELINE, PRESENT, PRESENT], [BASELINE, GONE, GONE], [None, None, NEW]]
    mapping_path = tmp_path / "out" / "reidentification.json"
    assert stat.S_IMODE(mapping_path.stat().st_mode) == 0o600
    originals = ReidentificationMap.load(mapping_path).original_uids()
    for path in sorted((tmp_path / "out").glob("sr_*.dcm")):
        sr = pydicom.dcmread(path)
        assert dciodvfy_errors(path) == [] and str(sr.PatientID) != PATIENT
        segs = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for group in _groups(sr)
                for item in group.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121191"}
        assert len(segs) == 1 and originals[segs.pop()] in {
            str(pydicom.dcmread(f / "seg.dcm", stop_before_pixels=True).SOPInstanceUID) for f in pacs.folders.values()}
