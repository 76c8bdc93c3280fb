"""The server under attack and misuse (issue 18): zip bombs, chunked oversize bodies, the API
description behind a key, 405 with Allow, no server paths in errors, key expiry, and every route
× role. A real uvicorn server in a subprocess, the embedded engine with the model in a thread; the
whole suite runs on SQLite and on a real PostgreSQL (``postgres_server.py``).
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from server_fixtures import ApiServer  # noqa: E402

from aiportal.server.client import ServerClient, ServerError  # noqa: E402

CT = "totalseg/example_ct_sm.nii.gz"
MAX_UPLOAD_MB = 5.0
ROLES = ("submitter", "viewer", "reviewer", "auditor", "admin", "monitor", "dashboard")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request):
    """The server's job store and keys: SQLite (the embedded default) and a real PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    from postgres_server import PostgresServer, missing_requirements

    if missing := missing_requirements():
        pytest.fail(missing)
    postgres = PostgresServer().start()
    yield {"AIPORTAL_SERVER_DATABASE_URL": postgres.url}
    postgres.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, database):
    audit_log = tmp_path_factory.mktemp("audit") / "audit.jsonl"  # the server's own log, anchored in its database
    server = ApiServer(tmp_path_factory.mktemp("server"), env={**database, "AIPORTAL_AUDIT_LOG": str(audit_log)}, args=[
        "--executor", "thread", "--workers", "1", "--max-upload-mb", str(MAX_UPLOAD_MB), "--rate-limit", "100000"])
    from aiportal.server.auth import ApiKeyStore
    from aiportal.server.jobs import make_engine
    from aiportal.server.roles import role_scopes

    server.db_url = (database.get("AIPORTAL_SERVER_DATABASE_URL")  # type: ignore[attr-defined]
                     or f"sqlite:///{server.data_dir / 'server.db'}")
    store = ApiKeyStore(make_engine(server.db_url))  # type: ignore[attr-defined]
    server.keys = {"admin": _role_key(server, "admin")}  # type: ignore[attr-defined]  # the CLI's --role
    for role in [*ROLES[:4], "monitor", "dashboard", "viewer2"]:  # the others straight into the store (faster)
        server.keys[role] = store.create(role, role_scopes(role.rstrip("2")))  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def _role_key(server: ApiServer, role: str) -> str:
    done = subprocess.run([sys.executable, "-m", "aiportal.server", "server-key", "--data-dir", str(server.data_dir),
                           "create", role, "--role", role], capture_output=True, text=True, check=True,
                          env={**os.environ, **server.env})
    return done.stdout.strip()


def _auth(api, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.keys[role]}"}


def _job_folders(api) -> list[Path]:
    jobs = api.data_dir / "jobs"
    return sorted(jobs.iterdir()) if jobs.is_dir() else []


def _post_zip(api, payload: bytes) -> requests.Response:
    return requests.post(f"{api.url}/v1/jobs", headers=_auth(api, "admin"), timeout=60,
                         files={"file": ("series.zip", payload, "application/zip")},
                         data={"model": "classic-ct", "consent": "true"})


# -- 1: zip bombs ------------------------------------------------------------------------------------
@functools.cache
def _bombs() -> tuple[bytes, bytes]:
    """(1 GiB of zeros in ~1 MB; 70 MiB of 1 %-noise blocks in ~1.3 MB), made once for both databases."""
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as bundle, \
            bundle.open("0001.dcm", "w", force_zip64=True) as member:
        for _ in range(1024):  # 1 GiB of zeros, ~1 MB deflated
            member.write(bytes(1 << 20))
    spread = io.BytesIO()  # many members, each compressing only ~50:1 (no ratio alarm), past 64 MiB together
    with zipfile.ZipFile(spread, "w", zipfile.ZIP_DEFLATED) as bundle:
        block = (os.urandom(1 << 14) + bytes(1 << 20))  # 1% noise
        for index in range(70):
            bundle.writestr(f"{index:04d}.dcm", block)
    return bomb.getvalue(), spread.getvalue()


def test_zip_bomb_is_refused_before_it_is_unpacked(api):
    before = _job_folders(api)
    bomb, spread = _bombs()
    assert len(bomb) < MAX_UPLOAD_MB * 2**20 and len(spread) < MAX_UPLOAD_MB * 2**20
    answer = _post_zip(api, bomb)
    assert answer.status_code == 413, answer.text
    assert "zip" in answer.json()["error"] and answer.json()["fix"]
    assert _job_folders(api) == before  # nothing left on disk
    answer = _post_zip(api, spread)
    assert answer.status_code == 413 and "unpacks to more than" in answer.json()["error"], answer.text
    assert _job_folders(api) == before


def test_declared_zip_sizes_are_checked_before_unpacking(tmp_path):
    from aiportal.server.limits import UploadRefused, safe_extract

    archive = tmp_path / "forged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a.dcm", os.urandom(3 << 20))
    with pytest.raises(UploadRefused) as caught:
        safe_extract(archive, tmp_path / "out", max_unpacked=1 << 20)  # the declared size trips it first
    assert caught.value.status == 413 and not (tmp_path / "out").exists()
    assert not (tmp_path / "out").exists()


# -- 4, 5: chunked bodies, API description, 405, paths -----------------------------------------------
def test_chunked_upload_over_the_limit_is_413(api):
    boundary = "aiportalboundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nclassic-ct\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii.gz\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(int(MAX_UPLOAD_MB) + 2):
            yield os.urandom(1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    before = _job_folders(api)
    answer = requests.post(f"{api.url}/v1/jobs", data=body(), timeout=60,  # a generator: chunked encoding
                           headers={**_auth(api, "admin"), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 413, answer.text
    assert "limit" in answer.json()["error"]
    assert _job_folders(api) == before


def test_api_description_needs_a_key_and_405_names_the_allowed_methods(api):
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
        assert requests.get(api.url + path, timeout=10).status_code == 401, path
        assert requests.get(api.url + path, headers=_auth(api, "viewer"), timeout=10).status_code == 200, path
    answer = requests.delete(f"{api.url}/v1/health", headers=_auth(api, "admin"), timeout=10)
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET", (answer.headers, answer.text)
    answer = requests.put(f"{api.url}/v1/jobs", headers=_auth(api, "admin"), timeout=10)
    assert answer.status_code == 405 and set(answer.headers["Allow"].split(", ")) == {"GET", "POST"}


def test_a_failed_job_shows_no_server_path(tmp_path):
    from aiportal.server.jobs import JobStore

    store = JobStore.from_url(f"sqlite:///{tmp_path / 'jobs.db'}")
    record, _ = store.create(owner="key:x", model="classic-ct", source_kind="upload", formats=("nrrd",))
    store.claim(record.id, "w")
    store.finish(record.id, "failed", error=f"cannot read {tmp_path}/jobs/{record.id}/input/upload.nii.gz: damaged",
                 fix="check /var/lib/aiportal/server/settings.json")
    failed = store.get(record.id)
    assert str(tmp_path) not in failed.error and "/var/lib" not in failed.fix
    assert "upload.nii.gz" in failed.error and "settings.json" in failed.fix  # the file's own name stays


def test_server_key_refuses_an_expiry_of_zero_or_less(api):
    for days in ("0", "-1"):
        done = subprocess.run([sys.executable, "-m", "aiportal.server", "server-key", "--data-dir", str(api.data_dir),
                               "create", "never", "--expires-days", days], capture_output=True, text=True)
        assert done.returncode == 1 and done.stdout == "", done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--expires-days" in lines[0] and "positive" in lines[0], done.stderr


# -- roles ---------------------------------------------------------------------------------------------
def _route_scope(method: str, path: str) -> str:
    """The scope each route needs (the documented table, kept here independently of the server)."""
    if path == "/v1/audit":
        return "audit"
    if path == "/metrics":
        return "metrics"
    if path == "/dashboard":
        return "dashboard"
    if path.startswith("/v1/admin/"):
        return "admin"
    if method == "post":
        return "submit"
    if "/results" in path:
        return "read"
    return "status"


ROLE_SCOPES = {"submitter": {"status", "submit"}, "viewer": {"status", "read"},
               "reviewer": {"status", "read", "review"}, "auditor": {"status", "audit"},
               "admin": {"status", "read", "submit", "review", "audit", "metrics", "dashboard", "admin"},
               "monitor": {"metrics"}, "dashboard": {"dashboard"}}


def test_every_route_times_every_role(api):
    spec = requests.get(f"{api.url}/openapi.json", headers=_auth(api, "admin"), timeout=10).json()
    checked = 0
    for path, methods in spec["paths"].items():
        concrete = path.replace("{job_id}", "0" * 32).replace("{name}", "labels.nrrd").replace("{model}", "classic-ct")
        for method in methods:
            needed = _route_scope(method, path)
            for role in ROLES:
                answer = requests.request(method.upper(), api.url + concrete, headers=_auth(api, role), timeout=30)
                allowed = needed in ROLE_SCOPES[role]
                assert (answer.status_code != 403) == allowed, (role, method, path, answer.status_code, answer.text)
                if not allowed:
                    assert needed in answer.json()["error"]
                checked += 1
    assert checked >= 13 * len(ROLES)


def test_which_results_each_role_sees(api, shared_data, tmp_path):
    submitter = ServerClient(api.url, api_key=api.keys["submitter"])
    job = submitter.submit_file(shared_data / CT, "classic-ct", consent=True)
    assert submitter.wait(job["id"], timeout_s=180)["state"] == "done"  # it may follow its job's state
    with pytest.raises(ServerError) as caught:
        submitter.results(job["id"])  # but not see the AI segmentation
    assert caught.value.status == 403
    reviewer = ServerClient(api.url, api_key=api.keys["reviewer"])
    assert job["id"] in {item["id"] for item in reviewer.jobs()}
    assert reviewer.results(job["id"])["volumes_ml"]
    assert (reviewer.fetch_all(job["id"], tmp_path / "out"))
    with pytest.raises(ServerError) as caught:
        reviewer.cancel(job["id"])  # review is read-only
    assert caught.value.status in (403, 404)
    for role in ("viewer", "auditor"):  # a viewer sees only its own jobs; an auditor no job
        with pytest.raises(ServerError) as caught:
            ServerClient(api.url, api_key=api.keys[role]).status(job["id"])
        assert caught.value.status == 404, role
        assert ServerClient(api.url, api_key=api.keys[role]).jobs() == []


def test_metrics_need_their_own_credential_and_count_routes_and_jobs(api, shared_data):
    assert requests.get(f"{api.url}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{api.url}/metrics", headers=_auth(api, "reviewer"), timeout=10).status_code == 403
    admin = ServerClient(api.url, api_key=api.keys["admin"])
    job = admin.submit_file(shared_data / CT, "classic-ct", consent=True)
    admin.wait(job["id"], timeout_s=180)
    answer = requests.get(f"{api.url}/metrics", headers=_auth(api, "monitor"), timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    done = samples['aiportal_jobs{model="classic-ct",state="done"}']
    assert done >= 1 and samples["aiportal_queue_depth"] == 0
    assert samples['aiportal_inference_seconds_count{model="classic-ct"}'] == done
    assert 0 < samples['aiportal_inference_seconds_sum{model="classic-ct"}'] < 600 * done
    posted = samples['aiportal_http_request_seconds_count{route="/v1/jobs",method="POST"}']
    assert posted >= 1 and samples['aiportal_http_requests_total{route="/v1/jobs",method="POST",status="201"}'] >= 1
    assert samples['aiportal_http_request_seconds_bucket{route="/v1/jobs/{job_id}",method="GET",le="+Inf"}'] >= 1
    assert job["id"] not in answer.text  # templates, never ids


def test_the_servers_audit_is_anchored_in_its_database(api, shared_data):
    admin = ServerClient(api.url, api_key=api.keys["admin"])
    job = admin.submit_file(shared_data / CT, "classic-ct", consent=True)
    assert admin.wait(job["id"], timeout_s=180)["state"] == "done"
    log = Path(api.env["AIPORTAL_AUDIT_LOG"])
    command = [sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log), "verify"]
    env = {**os.environ, "AIPORTAL_AUDIT_DATABASE_URL": api.db_url}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    runs = [line for line in log.read_text().splitlines() if '"ai_run"' in line]
    assert done.returncode == 0 and "INTACT" in done.stdout and runs, done.stderr
    original = log.read_text()
    log.write_text(original.replace('"classic-ct"', '"other-model"', 1))  # one edited record
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    log.write_text(original)
    assert done.returncode == 1 and "differs from its copy in the audit database" in done.stderr, done.stderr
