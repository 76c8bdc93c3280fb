"""The server's auto-dispatch runs the follow-up when a study's SEG arrives (real Orthanc, real uvicorn
server, ``--deidentify``, silent pilot). Orthanc holds a patient's three CT studies (real CT crop; the
priors moved by known rigid motions, real lesion shapes shrunk, removed, grown and added) with their SEGs;
when the current study's SEG arrives, the server finds the priors itself, pulls and de-identifies them with
one mapping, and stores a follow-up equal to `aiportal followup` on the original folders; nothing is pushed.
Pushed on request afterwards, the SRs reach the PACS re-identified: the patient's own ID, each referencing
its study's original SEG."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from dicom_validation import dciodvfy_errors  # noqa: E402
from server_fixtures import ApiServer  # noqa: E402
from test_followup_pacs import DATES, PATIENT, _study, _with_seg, three_time_points  # noqa: E402
from test_followup_tracking import _groups  # noqa: E402

from aiportal.server.client import ServerClient  # noqa: E402


@pytest.fixture(scope="module")
def studies(shared_data, tmp_path_factory):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    root = tmp_path_factory.mktemp("dispatch-studies")
    masks, motions = three_time_points(shared_data)
    source = shared_data / "totalseg" / "example_ct_dicom"
    folders = [_with_seg(runtime, _study(source, root / date, date=date, motion=motions[date]), masks[date])
               for date in DATES]
    yield folders
    runtime.scene.Clear(1)


def _last_change(orthanc) -> int:
    time.sleep(3)  # StableAge 1 s: the uploaded series' StableSeries changes are in the feed by now
    answer = requests.get(f"{orthanc.url}/changes", params={"last": ""}, auth=orthanc.auth, timeout=10)
    return int(answer.json()["Last"])


def test_seg_arrival_runs_the_follow_up_deidentified_silent_then_pushed(studies, tmp_path):
    from orthanc_server import OrthancServer, missing_requirements

    from aiportal.followup.run import run_follow_up

    expected = run_follow_up(studies[2], studies[:2], tmp_path / "cli").result  # the CLI's logic, same folders
    missing = missing_requirements()
    if missing:
        pytest.fail(f"Orthanc test server cannot run, missing: {', '.join(missing)}")
    orthanc = OrthancServer(tmp_path / "orthanc").start()
    try:
        for folder in studies[:2]:
            orthanc.upload(sorted(folder.glob("*.dcm")))
        orthanc.upload(sorted(p for p in studies[2].glob("*.dcm") if p.name != "seg.dcm"))
        rules = tmp_path / "rules.json"
        rules.write_text(json.dumps({"orthanc_url": orthanc.url, "silent_pilot": True, "poll_s": 0.5, "rules": [
            {"model": "classic-ct", "modality": "SEG", "followup": True, "max_priors": 3}]}))
        env = {"AIPORTAL_PACS_CONFIG": str(tmp_path / "no-pacs.json"), "AIPORTAL_PACS_FUPACS_URL": orthanc.dicomweb_url,
               "AIPORTAL_PACS_FUPACS_USERNAME": orthanc.user, "AIPORTAL_PACS_FUPACS_PASSWORD": orthanc.password}
        server = ApiServer(tmp_path / "server", env=env, args=["--executor", "thread", "--pacs", "fupacs",
                                                               "--dispatch-rules", str(rules), "--deidentify"])
        server.data_dir.mkdir(parents=True)
        # the feed read from now on: the priors' SEGs, stored before, start nothing (as after a restart)
        (server.data_dir / "dispatch.json").write_text(json.dumps({"last": _last_change(orthanc)}))
        admin = server.key("admin", "read,submit,audit,admin")
        server.start()
        try:
            client = ServerClient(server.url, api_key=admin)
            orthanc.upload([studies[2] / "seg.dcm"])  # the current study's SEG arrives
            deadline = time.monotonic() + 180
            while not (jobs := client.jobs()):
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.5)
            assert len(jobs) == 1, jobs
            job = client.wait(jobs[0]["id"], timeout_s=400)
            took = datetime.fromisoformat(job["finished"]) - datetime.fromisoformat(job["created"])
            print(f"dispatch follow-up job: {job['result'].get('seconds')}, "  # pytest -s shows it
                  f"submitted to done {took.total_seconds():.1f} s")
            assert job["state"] == "done", (job, server.log_tail())
            result = job["result"]
            assert result["kind"] == "followup" and result["time_points"] == list(DATES)
            assert [r.get("response") for r in result["responses"]] == [
                None, *(a.response.name for a in expected.responses[1:])] == [None, "PR", "PD"]
            assert [lesion["statuses"] for lesion in result["lesions"]] == [
                [s.status if s else None for s in t.states] for t in expected.tracks]
            srs = [item for item in result["files"] if item["kind"] == "sr"]
            assert len(srs) == 3
            # silent pilot: stored, not pushed
            assert job["push"] is False and result["push"] is None
            for item in srs:
                assert requests.post(f"{orthanc.url}/tools/lookup", data=item["sop_instance_uid"], auth=orthanc.auth,
                                     timeout=10).json() == []
            # de-identified: the stored SRs name a pseudonymous patient; the mapping stays in the job folder
            folder = server.data_dir / "jobs" / job["id"]
            assert all(dciodvfy_errors(folder / "results" / item["name"]) == [] for item in srs)
            stored = pydicom.dcmread(folder / "results" / srs[0]["name"])
            assert str(stored.PatientID) != PATIENT and "Follow" not in str(stored.PatientName)
            assert (folder / "reidentification.json").is_file() and not (folder / "input" / "followup").exists()

            # pushed on request: re-identified, each SR referencing its own study's original SEG
            assert len(client.push(job["id"])["objects"]) == 3
            for item, folder_of_date in zip(sorted(srs, key=lambda i: i["name"]), studies, strict=True):
                (found,) = requests.post(f"{orthanc.url}/tools/lookup", data=item["sop_instance_uid"],
                                         auth=orthanc.auth, timeout=10).json()
                data = requests.get(f"{orthanc.url}{found['Path']}/file", auth=orthanc.auth, timeout=30).content
                path = tmp_path / "pushed.dcm"
                path.write_bytes(data)
                sr = pydicom.dcmread(path)
                assert str(sr.PatientID) == PATIENT
                seg_uid = str(pydicom.dcmread(folder_of_date / "seg.dcm", stop_before_pixels=True).SOPInstanceUID)
                referenced = {str(ref.ReferencedSOPInstanceUID) for group in _groups(sr)
                              for content in group.ContentSequence if "ReferencedSOPSequence" in content
                              and content.ConceptNameCodeSequence[0].CodeValue == "121191"
                              for ref in content.ReferencedSOPSequence}
                assert referenced == {seg_uid}, item["name"]
        finally:
            server.stop()
    finally:
        orthanc.stop()
