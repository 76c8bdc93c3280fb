"""AIMeasure's *Fetch priors* (aiportal.followup.desktop) against a real Orthanc: the current study open in a
real Slicer-core scene is found by its own files (Slicer's ``DICOM.instanceUIDs``), its priors are pulled in
a worker thread and loaded with their SEGs, the panel's tracking job follows the lesions over the three time
points, and one longitudinal SR per time point is written (dciodvfy-clean, one Tracking UID per lesion)."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_validation import dciodvfy_errors  # noqa: E402
from test_followup_pacs import PATIENT, pacs  # noqa: E402, F401 - the Orthanc with three time points
from test_followup_tracking import _groups, _tracking  # noqa: E402

from aiportal.errors import InputError  # noqa: E402
from aiportal.followup.desktop import (  # noqa: E402
    fetch_priors,
    sr_source_of_point,
    sr_source_of_volume,
    study_uid_of,
    write_series_srs,
)
from aiportal.followup.load import load_time_point  # noqa: E402
from aiportal.followup.scene import series_job  # noqa: E402
from aiportal.followup.tracking import BASELINE, GONE, NEW, PRESENT  # noqa: E402
from aiportal.pacs import PacsError  # noqa: E402
from aiportal.segmentation import segment_ids  # noqa: E402


def _files_of(volume, folder: Path) -> list[Path]:
    """What ``slicer.dicomDatabase.fileForInstance`` gives for each of the volume's ``DICOM.instanceUIDs``."""
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.glob("*.dcm")}
    return [by_uid[uid] for uid in volume.GetAttribute("DICOM.instanceUIDs").split()]


def test_fetch_priors_follow_and_write_srs(pacs, tmp_path):  # noqa: F811 - the imported fixture
    runtime = pacs.runtime
    current = load_time_point(pacs.folders["20240701"], runtime)  # the study the user has open, with its lesions
    files = _files_of(current.volume, pacs.folders["20240701"])
    assert study_uid_of(current.volume, files) == pacs.uid["20240701"]
    fetched = fetch_priors("followup-pacs", pacs.uid["20240701"], tmp_path / "work", runtime, protocol="dicomweb")
    try:
        assert fetched.patient_id == PATIENT
        assert [p.label for p in fetched.points] == ["20240101", "20240401"]
        assert list(fetched.excluded) == ["20230601"] and "has no DICOM SEG" in fetched.excluded["20230601"]
        for point in fetched.points:  # each prior's SEG on its own images, in this scene
            assert point.volume.GetScene() is runtime.scene
            assert len(segment_ids(point.segmentation)) == len(pacs.masks[point.label])
        # the panel's job: every prior registered to the current study, the lesions tracked
        sources = {p.label: sr_source_of_point(p) for p in fetched.points}
        sources["20240701"] = sr_source_of_volume(current.volume, files)  # read before any transform is set
        job = series_job([*((p.label, p.segmentation, p.volume) for p in fetched.points),
                          ("20240701", current.segmentation, current.volume)])
        job.start()
        job.wait()
        result = job.finish()
        assert result.labels == ["20240101", "20240401", "20240701"]
        assert [[s.status if s else None for s in t.states] for t in result.tracks] == [
            [BASELINE, PRESENT, PRESENT], [BASELINE, GONE, GONE], [None, None, NEW]]
        assert [a.response.name for a in result.responses[1:]] == ["PR", "PD"]
        written, skipped = write_series_srs(result, sources, tmp_path / "out")
        assert not skipped and [p.name for p in written] == [
            "sr_0_20240101.dcm", "sr_1_20240401.dcm", "sr_2_20240701.dcm"]
        tracked = {}
        for path, label in zip(written, result.labels, strict=True):
            assert dciodvfy_errors(path) == [], path.name
            sr = pydicom.dcmread(path)
            assert str(sr.StudyInstanceUID) == pacs.uid[label]  # each SR in its own study
            for group in _groups(sr):
                identifier, uid = _tracking(group)
                assert tracked.setdefault(identifier, uid) == uid
            # a fetched prior's lesions reference their segment in its SEG (TID 1411); the current's were not
            # read from a SEG here, so only its RECIST groups
            references = [item for group in _groups(sr) for item in group.ContentSequence
                          if item.ConceptNameCodeSequence[0].CodeValue == "121191"]
            assert len(references) == (len(pacs.masks[label]) if label != "20240701" else 0), label
        assert tracked == {t.tracking_id: t.tracking_uid for t in result.tracks}
        # a time point not loaded from DICOM gets no SR, and the reason
        _, skipped = write_series_srs(result, {**sources, "20240701": None}, tmp_path / "partial")
        assert "not loaded from DICOM" in skipped["20240701"]
    finally:
        work = fetched.work
        fetched.remove()
    assert not work.exists()


def test_fetch_refusals_and_deidentified_priors(pacs, tmp_path):  # noqa: F811
    runtime = pacs.runtime
    blank = runtime.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "typed in")
    with pytest.raises(InputError, match="typed in was not loaded from DICOM"):
        study_uid_of(blank, [])
    with pytest.raises(InputError, match="No current study UID"):
        fetch_priors("followup-pacs", "", tmp_path / "w0", runtime)
    with pytest.raises(PacsError, match="No prior study of patient FOLLOWUP-ALONE"):
        fetch_priors("followup-pacs", pacs.lonely, tmp_path / "w1", runtime, protocol="dicomweb")
    assert not (tmp_path / "w1").exists()  # a failed pull leaves nothing behind
    with pytest.raises(PacsError, match="followup-down"):
        fetch_priors("followup-down", pacs.uid["20240701"], tmp_path / "w2", runtime)
    with pytest.raises(PacsError, match="nowhere"):
        fetch_priors("nowhere", pacs.uid["20240701"], tmp_path / "w3", runtime)
    fetched = fetch_priors("followup-pacs", pacs.uid["20240701"], tmp_path / "w4", runtime, protocol="dicomweb",
                           deidentify=True, max_priors=1)
    try:
        assert [p.label for p in fetched.points] == ["20240401"]  # the date kept as the label
        header = fetched.points[0].source.datasets[0]
        assert str(header.PatientID) not in ("", PATIENT) and str(header.get("StudyDate", "")) != "20240401"
        assert str(header.StudyInstanceUID) != pacs.uid["20240401"]
        assert fetched.mapping.original_uids()[str(header.StudyInstanceUID)] == pacs.uid["20240401"]
    finally:
        fetched.remove()
    assert not (tmp_path / "w4").exists()


def test_panel_logic_fetches_follows_and_saves(pacs, tmp_path):  # noqa: F811
    """AIMeasure's follow-up panel logic (AIMeasureLib/followup_panel.py, with Slicer 5.12's own slicer.i18n):
    Fetch priors (de-identified), the fetched priors ticked as 'Earlier studies', Follow over time points,
    then the output folder's table, plot, SRs and re-identification mapping."""
    import importlib.util
    import json
    import stat

    from aiportal.pacs.deidentify import ReidentificationMap

    reference = Path(__file__).resolve().parents[2] / "shared" / "slicer-reference" / "slicer-5.12"
    i18n = reference / "Base" / "Python" / "slicer" / "i18n.py"
    if not i18n.is_file():
        pytest.skip(f"Slicer reference sources not found in {reference}")
    spec = importlib.util.spec_from_file_location("slicer.i18n", i18n)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "slicer.i18n", module)
        patch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "AIMeasure"))
        from AIMeasureLib.followup_panel import FollowUpSeriesLogic, timePoints

    runtime = pacs.runtime
    current = load_time_point(pacs.folders["20240701"], runtime)
    files_of = {current.volume.GetID(): _files_of(current.volume, pacs.folders["20240701"])}
    logic = FollowUpSeriesLogic()
    job = logic.startFetch("followup-pacs", current.volume, True, filesOf=lambda v: files_of.get(v.GetID(), []))
    job.wait()
    fetched = logic.loadFetched(job.finish(), runtime)
    work = fetched.work
    try:
        assert [p.label for p in fetched.points] == ["20240101", "20240401"]
        points = timePoints(current.segmentation, current.volume, [p.segmentation for p in reversed(fetched.points)])
        assert [label for label, _s, _v in points] == ["20240101", "20240401", "20240701"]
        job = logic.start(points, filesOf=lambda v: files_of.get(v.GetID(), []))
        job.wait()
        view = logic.apply(runtime.scene, points, job.finish())
        assert "Partial response" in view.summary and "Progressive disease" in view.summary
        written = [path.name for path in logic.save(tmp_path / "out")]
        assert written == ["followup.json", "followup.csv", "followup.png", "sr_0_20240101.dcm",
                           "sr_1_20240401.dcm", "sr_2_20240701.dcm", "reidentification.json"] and not logic.srSkipped
        document = json.loads((tmp_path / "out" / "followup.json").read_text())
        assert [r.get("response") for r in document["responses"]] == [None, "PR", "PD"]
        mapping = tmp_path / "out" / "reidentification.json"
        assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
        originals = ReidentificationMap.load(mapping).original_uids()
        for name, label in zip(written[3:6], ("20240101", "20240401", "20240701"), strict=True):
            sr = pydicom.dcmread(tmp_path / "out" / name)
            assert dciodvfy_errors(tmp_path / "out" / name) == [], name
            # the priors' SRs are on the pseudonymous patient (the mapping gives their studies back); the current
            # study's is on the study open in the scene
            assert originals.get(str(sr.StudyInstanceUID), str(sr.StudyInstanceUID)) == pacs.uid[label]
            assert (str(sr.PatientID) == PATIENT) == (label == "20240701")
    finally:
        logic.cleanup()
    assert not work.exists()


def test_prior_without_seg_segmented_on_fetch(pacs, tmp_path):  # noqa: F811
    """'Priors without a SEG': the 2023 prior (no SEG on the PACS) segmented by the named model in the worker
    thread, loaded with that SEG and said so; a model that cannot run leaves it out, with the reason."""
    from aiportal.followup.load import model_of_seg

    runtime = pacs.runtime
    fetched = fetch_priors("followup-pacs", pacs.uid["20240701"], tmp_path / "w", runtime, protocol="dicomweb",
                           segment_missing="classic-ct")
    try:
        assert [p.label for p in fetched.points] == ["20230601", "20240101", "20240401"] and not fetched.excluded
        segmented = fetched.points[0]
        assert model_of_seg(segmented.seg_path) == "classic-ct" and dciodvfy_errors(segmented.seg_path) == []
        assert fetched.notes == ["20230601 had no SEG: segmented by classic-ct for this follow-up"]
        assert sr_source_of_point(segmented).segment_numbers  # its SR can reference the new SEG's segments
    finally:
        fetched.remove()
    fetched = fetch_priors("followup-pacs", pacs.uid["20240701"], tmp_path / "v", runtime, protocol="dicomweb",
                           segment_missing="no-such-model")
    try:
        assert [p.label for p in fetched.points] == ["20240101", "20240401"]
        assert "no-such-model could not segment it" in fetched.excluded["20230601"]
    finally:
        fetched.remove()
