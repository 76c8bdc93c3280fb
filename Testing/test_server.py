"""The inference server (``aiportal serve``) on real services, all on loopback.

A real uvicorn server in a subprocess (embedded engine, model in a thread for speed), API keys and
JWTs from a local JWKS; a second setup with real Redis, a real Celery worker and a real Orthanc
for the PACS path, worker loss and server restart. Results are checked against the same model run
in this process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from server_fixtures import ApiServer, CeleryWorker, JwksIssuer, RedisServer  # noqa: E402

from aiportal.server.client import ServerClient, ServerError, ServerUnreachable  # noqa: E402

CT = "totalseg/example_ct_sm.nii.gz"
MAX_UPLOAD_MB = 2.0


def _labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def issuer():
    idp = JwksIssuer()
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, issuer):
    server = ApiServer(tmp_path_factory.mktemp("server"), args=[
        "--executor", "thread", "--workers", "2", "--max-upload-mb", str(MAX_UPLOAD_MB), "--rate-limit", "100000",
        "--oidc-issuer", issuer.issuer, "--oidc-jwks-url", issuer.jwks_url, "--oidc-audience", issuer.audience,
        "--oidc-role-claim", "realm_access.roles"])
    server.keys = {  # type: ignore[attr-defined]
        "full": server.key("full", "read,submit,audit"),
        "read": server.key("reader", "read"),
        "audit": server.key("auditor", "audit"),
        "expired": server.key("old", "read,submit,audit,admin", expires_days=1e-5),  # expires in 0.9 s
        "revoked": server.key("gone", "read,submit,audit,admin"),
        **{f"client{n}": server.key(f"client{n}", "read,submit") for n in range(4)},
    }
    revoked_id = server.keys["revoked"].split("_")[1]  # type: ignore[attr-defined]
    subprocess.run([sys.executable, "-m", "aiportal.server", "server-key", "--data-dir", str(server.data_dir),
                    "revoke", revoked_id], check=True, capture_output=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory):
    """classic-ct on the test CT, run in this process by the same pipeline: what every server job must give."""
    from aiportal.pipeline import PipelineRequest, run_segmentation

    out = tmp_path_factory.mktemp("reference") / "out"
    result = run_segmentation(PipelineRequest(shared_data / CT, "classic-ct", out, executor="thread"))
    return {"volumes_ml": result.volumes_ml, "labels": _labels(out / "labels.nrrd")}


def _client(api, name: str = "full", **options) -> ServerClient:
    return ServerClient(api.url, api_key=api.keys[name], **options)


# -- security --------------------------------------------------------------------------------------
def _operations(api) -> list[tuple[str, str, str]]:
    """(method, concrete path, scope) of every operation the OpenAPI document publishes."""
    spec = requests.get(f"{api.url}/openapi.json", headers={"Authorization": f"Bearer {api.keys['full']}"},
                        timeout=10).json()
    scopes = {"/v1/audit": "audit", "/metrics": "metrics", "/dashboard": "dashboard", "/v1/admin/weights": "admin"}
    operations = []
    for path, methods in spec["paths"].items():
        concrete = path.replace("{job_id}", "0" * 32).replace("{name}", "labels.nrrd").replace("{model}", "classic-ct")
        for method in methods:
            scope = scopes.get(path, "submit" if method == "post" else "read" if "/results" in path else "status")
            operations.append((method.upper(), concrete, scope))
    assert len(operations) >= 13
    return operations


def test_every_endpoint_refuses_missing_wrong_expired_or_underscoped_credentials(api, issuer):
    under_scoped = {"status": api.keys["audit"], "read": api.keys["audit"], "submit": api.keys["read"],
                    "audit": api.keys["read"], "metrics": api.keys["read"], "dashboard": api.keys["read"],
                    "admin": api.keys["full"]}
    bad = {"none": {}, "wrong key": {"Authorization": "Bearer aip_000000000000_wrongsecret"},
           "garbage": {"Authorization": "Bearer not-a-token"}, "basic scheme": {"Authorization": "Basic dXNlcjpw"},
           "expired key": {"Authorization": f"Bearer {api.keys['expired']}"},
           "revoked key": {"Authorization": f"Bearer {api.keys['revoked']}"},
           "expired token": {"Authorization": f"Bearer {issuer.token(expires_in_s=-60)}"},
           "token of another issuer": {"Authorization": f"Bearer {issuer.token(issuer='https://evil.test')}"},
           "token for another audience": {"Authorization": f"Bearer {issuer.token(audience='other')}"},
           "token signed by another key": {"Authorization": f"Bearer {issuer.token(wrong_key=True)}"}}
    for method, path, scope in _operations(api):
        for what, headers in bad.items():
            answer = requests.request(method, api.url + path, headers=headers, timeout=10)
            assert answer.status_code == 401, (method, path, what, answer.text)
            assert answer.json()["error"] and answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert api.keys["expired"].split("_")[2] not in answer.text  # never echo a secret
        answer = requests.request(method, api.url + path, headers={"Authorization": f"Bearer {under_scoped[scope]}"},
                                  timeout=10)
        assert answer.status_code == 403, (method, path, answer.text)
        assert scope in answer.json()["error"]
        token = issuer.token(roles=("aiportal-auditor",) if scope != "audit" else ("aiportal-reader",))
        if scope in ("read", "status"):
            token = issuer.token(roles=("some-other-role",))
        answer = requests.request(method, api.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 403, (method, path, "jwt", answer.text)
    assert requests.get(f"{api.url}/no/such/path", timeout=10).status_code == 401


def test_valid_jwt_with_role_mapping_is_accepted(api, issuer):
    headers = {"Authorization": f"Bearer {issuer.token(subject='radiologist-7', roles=('aiportal-user',))}"}
    assert requests.get(f"{api.url}/v1/health", headers=headers, timeout=10).json()["status"] == "ok"
    assert requests.get(f"{api.url}/v1/jobs", headers=headers, timeout=10).json() == []  # own jobs only
    headers = {"Authorization": f"Bearer {issuer.token(roles=('aiportal-auditor',))}"}
    assert requests.get(f"{api.url}/v1/audit", headers=headers, timeout=10).status_code == 200


def test_rate_limiter_refuses_bursts_per_client():
    from aiportal.server.auth import RateLimiter

    limiter = RateLimiter(per_minute=5)
    assert [limiter.allow("a") for _ in range(5)] == [0.0] * 5
    assert limiter.allow("a") > 0  # the sixth in the same second waits
    assert limiter.allow("b") == 0.0  # another client is not affected


# -- input errors -----------------------------------------------------------------------------------
def test_bad_uploads_get_a_clear_4xx(api, shared_data, tmp_path):
    client = _client(api)
    ct = shared_data / CT
    cases = []
    oversize = tmp_path / "big.nii.gz"
    oversize.write_bytes(os.urandom(int((MAX_UPLOAD_MB + 0.5) * 2**20)))
    cases.append(("oversize", lambda: client.submit_file(oversize, "classic-ct", consent=True), 413, "limit"))
    malformed = tmp_path / "broken.nii.gz"
    malformed.write_bytes(ct.read_bytes()[:5000])
    cases.append(("malformed", lambda: client.submit_file(malformed, "classic-ct", consent=True), 400, "readable"))
    cases.append(("unknown model", lambda: client.submit_file(ct, "no-such-model", consent=True), 404, "classic-ct"))
    cases.append(("no consent", lambda: client.submit_file(ct, "classic-ct", consent=False), 400, "consent"))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases.append(("wrong type", lambda: client.submit_file(text, "classic-ct", consent=True), 415, ".nii.gz"))
    cases.append(("SEG of NIfTI", lambda: client.submit_file(ct, "classic-ct", consent=True, formats="seg"), 400,
                  "DICOM"))
    cases.append(("bad format", lambda: client.submit_file(ct, "classic-ct", consent=True, formats="png"), 400,
                  "format"))
    cases.append(("no PACS", lambda: client.submit_pacs("1.2.3", "classic-ct"), 400, "PACS"))
    for what, call, status, words in cases:
        with pytest.raises(ServerError) as caught:
            call()
        assert caught.value.status == status, (what, str(caught.value))
        assert words.lower() in str(caught.value).lower() and caught.value.fix, what
    assert client.jobs() == [] or all(job["state"] != "queued" for job in client.jobs())


def test_unreachable_server_is_a_clear_error_not_a_hang():
    from processes import free_port

    client = ServerClient(f"http://127.0.0.1:{free_port()}", api_key="aip_x_y", timeout_s=3)
    assert client.available() is False
    with pytest.raises(ServerUnreachable, match="cannot be reached"):
        client.models()


# -- jobs --------------------------------------------------------------------------------------------
def test_upload_job_progress_events_results_and_audit(api, shared_data, reference, tmp_path):
    client = _client(api)
    models = client.models()
    assert "classic-ct" in [model["id"] for model in models]
    job = client.submit_file(shared_data / CT, "classic-ct", consent=True, client_request_id="req-1")
    again = client.submit_file(shared_data / CT, "classic-ct", consent=True, client_request_id="req-1")
    assert again["id"] == job["id"]  # idempotent submission
    events = list(client.events(job["id"], timeout_s=120))
    assert events[-1]["state"] == "done", events[-1]
    fractions = [event["fraction"] for event in events]
    assert fractions == sorted(fractions) and len({event["stage"] for event in events}) >= 2
    result = client.results(job["id"])
    assert result["volumes_ml"] == reference["volumes_ml"]
    files = client.fetch_all(job["id"], tmp_path / "out")
    assert {path.name for path in files} >= {"labels.nrrd", "segmentation.seg.nrrd", "segments.json"}
    np.testing.assert_array_equal(_labels(tmp_path / "out" / "labels.nrrd"), reference["labels"])
    records = client.audit(run_id=result["run_id"])
    assert [record["event"] for record in records] == ["ai_run", "export"]
    assert records[0]["model_id"] == "classic-ct" and records[0]["user"].startswith("key:")
    log = (api.data_dir / "server.log").read_text()
    assert "example_ct" not in log and api.keys["full"] not in log  # no file names, no secrets in the log
    with pytest.raises(ServerError) as caught:
        _client(api, "client0").status(job["id"])  # another client's job does not exist for it
    assert caught.value.status == 404


def test_cancel_a_queued_job(api, shared_data):
    client = _client(api, "client3")
    jobs = [client.submit_file(shared_data / CT, "classic-ct", consent=True) for _ in range(4)]
    cancelled = client.cancel(jobs[-1]["id"])  # 2 workers busy with the first ones: the last is still queued
    assert cancelled["state"] == "cancelled"
    final = [client.wait(job["id"], timeout_s=120) for job in jobs]
    assert [job["state"] for job in final] == ["done"] * 3 + ["cancelled"]
    with pytest.raises(ServerError) as caught:
        client.results(jobs[-1]["id"])
    assert caught.value.status == 409


def test_20_concurrent_jobs_from_4_clients(api, shared_data, reference):
    outcomes: dict[str, list] = {}

    def one_client(name: str) -> None:
        client = _client(api, name)
        submitted = [client.submit_file(shared_data / CT, "classic-ct", consent=True) for _ in range(5)]
        outcomes[name] = [client.wait(job["id"], timeout_s=300, poll_s=0.3) for job in submitted]
        outcomes[name] = [(job, client.results(job["id"])) for job in outcomes[name]]

    threads = [threading.Thread(target=one_client, args=(f"client{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=400)
    assert sorted(outcomes) == [f"client{n}" for n in range(4)]
    finished = [pair for pairs in outcomes.values() for pair in pairs]
    assert len(finished) == 20 and len({job["id"] for job, _ in finished}) == 20
    for job, result in finished:
        assert job["state"] == "done", job
        assert result["volumes_ml"] == reference["volumes_ml"]


def test_monai_label_info_and_infer(api, shared_data, reference, tmp_path):
    headers = {"Authorization": f"Bearer {api.keys['full']}"}
    info = requests.get(f"{api.url}/info/", headers=headers, timeout=10).json()
    assert "classic-ct" in info["models"] and "Body" in info["models"]["classic-ct"]["labels"]
    with open(shared_data / CT, "rb") as image:
        answer = requests.post(f"{api.url}/infer/classic-ct", params={"image": "ct1", "output": "image"},
                               files={"file": ("image.nii.gz", image)}, data={"params": '{"consent": true}'},
                               headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    (tmp_path / "labels.nrrd").write_bytes(answer.content)
    np.testing.assert_array_equal(_labels(tmp_path / "labels.nrrd"), reference["labels"])
    with open(shared_data / CT, "rb") as image:  # MONAI Label's API has no consent field: params carry it
        answer = requests.post(f"{api.url}/infer/classic-ct", files={"file": ("image.nii.gz", image)},
                               data={"params": "{}"}, headers=headers, timeout=60)
    assert answer.status_code == 400 and "consent" in answer.json()["error"]


def test_embedded_restart_loses_no_job(api, shared_data, tmp_path):
    """Kill the server with jobs queued and running; after a restart each ends done or explicitly failed."""
    server = ApiServer(tmp_path / "restart", args=["--executor", "thread", "--workers", "1"])
    key = server.key("k", "read,submit")
    server.start()
    client = ServerClient(server.url, api_key=key)
    jobs = [client.submit_file(shared_data / CT, "classic-ct", consent=True) for _ in range(3)]
    server.kill()
    server.start()
    final = [client.wait(job["id"], timeout_s=180) for job in jobs]
    server.stop()
    assert all(job["state"] in ("done", "failed") for job in final), final
    assert all(job["error"] for job in final if job["state"] == "failed")
    assert sum(job["state"] == "done" for job in final) >= 2


def test_schemathesis_fuzz_finds_no_server_error(api):
    """Property-based fuzzing of every operation in the OpenAPI document: no 5xx, responses match the schema."""
    pytest.importorskip("schemathesis")
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", "15", "--seed", str(random.randrange(1000)),
               "-H", f"Authorization: Bearer {api.keys['full']}", "--exclude-path-regex", "/events$",
               "--request-timeout", "30", "--no-color"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Tested: 17" in done.stdout and " passed" in done.stdout, done.stdout[-2000:]


# -- Celery, Redis, Orthanc --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    from orthanc_server import OrthancServer, missing_requirements

    missing = missing_requirements()
    if missing:
        pytest.fail(f"Orthanc test server cannot run, missing: {', '.join(missing)}")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def _spleen_box_and_volume(shared_data, files) -> tuple[list[int], float]:
    """A box around TotalSegmentator's spleen on the middle slice of the series, and the spleen's volume (mL)."""
    import nibabel

    from aiportal.io.dicom_series import read_dicom_series
    from aiportal.io.volumes import nearest_on_grid

    image = read_dicom_series(files[0].parent)
    reference = nibabel.load(shared_data / "totalseg" / "example_seg_dicom.nii.gz")
    labels, _ = nearest_on_grid(np.asarray(reference.dataobj).transpose(2, 1, 0), reference.affine,
                                image.array.shape, image.ijk_to_ras)
    spleen = labels == 1  # TotalSegmentator "total": 1 = spleen
    k = image.array.shape[0] // 2
    rows, columns = np.nonzero(spleen[k])
    voxel_ml = float(np.prod(np.linalg.norm(image.ijk_to_ras[:3, :3], axis=0))) / 1000
    return [int(columns.min()), int(rows.min()), k, int(columns.max()), int(rows.max()), k], spleen.sum() * voxel_ml


def test_celery_pacs_job_push_worker_loss_and_api_restart(orthanc, shared_data, tmp_path):
    from orthanc_server import ct_with_uids

    from aiportal.server.settings import ServerSettings

    series = ct_with_uids(shared_data / "totalseg/example_ct_dicom", tmp_path / "series")
    orthanc.upload(series.files)
    redis_server = RedisServer(tmp_path / "redis").start()
    data_dir = tmp_path / "celery-server"
    settings = ServerSettings(data_dir=data_dir, engine="celery", broker_url=redis_server.url,
                              pacs_endpoint="testpacs", stale_after_s=6.0, max_attempts=2,
                              executor="thread")
    env = {**settings.environment(), "AIPORTAL_PACS_CONFIG": str(tmp_path / "no-pacs.json"),
           "AIPORTAL_PACS_TESTPACS_URL": orthanc.dicomweb_url, "AIPORTAL_PACS_TESTPACS_USERNAME": orthanc.user,
           "AIPORTAL_PACS_TESTPACS_PASSWORD": orthanc.password}
    server = ApiServer(data_dir, env=env)
    key = server.key("pacs-client", "read,submit,audit")
    workers: list[CeleryWorker] = []
    try:
        server.start()
        worker = CeleryWorker(env, ["aiportal.classic-ct", "aiportal.litemedsam"], tmp_path / "worker1.log",
                              "w1").start()
        workers.append(worker)
        client = ServerClient(server.url, api_key=key)
        job = client.submit_pacs(series.study_uid, "classic-ct", series_uid=series.series_uid, push=True)
        job = client.wait(job["id"], timeout_s=180)
        assert job["state"] == "done", (job, worker.log_tail())
        pushed = job["result"]["push"]
        assert pushed["verified"] and len(pushed["objects"]) == 2
        for sop_uid in pushed["objects"]:  # on the PACS: found by Orthanc's own index
            found = requests.post(f"{orthanc.url}/tools/lookup", data=sop_uid, auth=orthanc.auth, timeout=10).json()
            assert [item["Type"] for item in found] == ["Instance"]
        records = client.audit(run_id=job["result"]["run_id"])
        assert [r["event"] for r in records] == ["ai_run", "export", "export"]
        assert records[0]["study_uid"] == series.study_uid and records[2]["destination"] == "pacs"
        assert sorted(records[2]["pushed"]) == sorted(pushed["objects"])

        # a real-weight model from the same PACS series: LiteMedSAM (its own environment) with a box on the spleen
        box, spleen_ml = _spleen_box_and_volume(shared_data, series.files)
        job = client.submit_pacs(series.study_uid, "litemedsam", series_uid=series.series_uid, push=True,
                                 params={"boxes": [box]})
        job = client.wait(job["id"], timeout_s=300)
        assert job["state"] == "done", (job, worker.log_tail())
        assert job["result"]["volumes_ml"]["Box 1"] == pytest.approx(spleen_ml, rel=0.15)
        assert job["result"]["push"]["verified"] and len(job["result"]["push"]["objects"]) == 2
        records = client.audit(run_id=job["result"]["run_id"])
        assert records[0]["event"] == "ai_run" and records[0]["model_id"] == "litemedsam"
        assert records[0]["weights_sha256"] != "none" and records[-1]["destination"] == "pacs"

        # worker killed mid-job and the API server restarted: the job is retried by a new worker
        job = client.submit_pacs(series.study_uid, "classic-ct", series_uid=series.series_uid)
        deadline = time.monotonic() + 120
        while (status := client.status(job["id"]))["state"] != "running" or status["fraction"] < 0.05:
            assert time.monotonic() < deadline and status["state"] in ("queued", "running"), status
            time.sleep(0.1)
        worker.kill()
        server.kill()
        server.start()
        workers.append(CeleryWorker(env, ["aiportal.classic-ct"], tmp_path / "worker2.log", "w2").start())
        final = client.wait(job["id"], timeout_s=180)
        assert final["state"] == "done" and final["attempts"] == 2, (final["error"], workers[-1].log_tail())
    finally:
        for item in workers:
            item.stop()
        server.stop()
        redis_server.stop()


def test_store_fails_a_job_explicitly_when_out_of_attempts(tmp_path):
    from aiportal.server.jobs import JobStore

    store = JobStore.from_url(f"sqlite:///{tmp_path / 'jobs.db'}")
    record, created = store.create(owner="key:a", model="classic-ct", source_kind="upload", formats=("nrrd",),
                                   client_request_id="r1")
    assert created and store.create(owner="key:a", model="classic-ct", source_kind="upload", formats=("nrrd",),
                                    client_request_id="r1") == (store.get(record.id), False)
    assert store.claim(record.id, "w1") and not store.claim(record.id, "w2")
    assert store.recover(stale_after_s=0, max_attempts=2, every_running=True)["requeued"] == [record.id]
    assert store.claim(record.id, "w3")
    assert store.recover(stale_after_s=0, max_attempts=2, every_running=True)["failed"] == [record.id]
    failed = store.get(record.id)
    assert failed.state == "failed" and "worker" in failed.error and failed.fix
    json.dumps(failed.result)


def test_auto_dispatch_silent_pilot(orthanc, shared_data, tmp_path):
    """A new stable CT series on Orthanc is routed by rule to classic-ct; results stored and audited, not pushed."""
    from orthanc_server import ct_with_uids

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"orthanc_url": orthanc.url, "silent_pilot": True, "poll_s": 0.5, "rules": [
        {"model": "classic-ct", "modality": "MR"}, {"model": "classic-ct", "modality": "CT", "formats": "seg,sr"}]}))
    env = {"AIPORTAL_PACS_CONFIG": str(tmp_path / "no-pacs.json"), "AIPORTAL_PACS_TESTPACS_URL": orthanc.dicomweb_url,
           "AIPORTAL_PACS_TESTPACS_USERNAME": orthanc.user, "AIPORTAL_PACS_TESTPACS_PASSWORD": orthanc.password}
    server = ApiServer(tmp_path / "dispatch", env=env, args=["--executor", "thread", "--pacs", "testpacs",
                                                             "--dispatch-rules", str(rules)])
    admin = server.key("admin", "read,audit,admin")
    server.start()
    try:
        series = ct_with_uids(shared_data / "totalseg/example_ct_dicom", tmp_path / "series",
                              description="dispatch test")
        orthanc.upload(series.files)
        client = ServerClient(server.url, api_key=admin)
        deadline = time.monotonic() + 120
        while not (mine := [job for job in client.jobs() if job["series_uid"] == series.series_uid]):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        job = client.wait(mine[0]["id"], timeout_s=120)
        assert job["state"] == "done" and job["push"] is False and job["result"]["push"] is None, job
        seg = next(item for item in job["result"]["files"] if item["kind"] == "seg")
        found = requests.post(f"{orthanc.url}/tools/lookup", data=seg["sop_instance_uid"], auth=orthanc.auth,
                              timeout=10).json()
        assert found == []  # silent pilot: nothing pushed
        records = client.audit(run_id=job["result"]["run_id"])
        assert [record["event"] for record in records] == ["ai_run", "export"]
        assert records[0]["via"] == "silent-pilot"  # the governance report's silent-pilot concordance counts it
    finally:
        server.stop()
