"""An administrator uploads a weights bundle to the inference server once; its Celery worker uses it.

Real services on loopback: uvicorn (``aiportal serve --engine celery``), Redis and a Celery worker
sharing the server's weights folders. The bundle is made by ``aiportal models pack`` from a loopback
"publisher" serving TotalSegmentator's 3 mm release zip with tiny threshold weights. Before the
upload a TotalSegmentator job fails naming the fix; a submitter may not upload; a bundle with one
changed byte or over the size cap is refused and leaves nothing; the real bundle (larger than the
image upload cap, which does not apply to it) installs, ``GET`` re-hashes it, and the next job runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from server_fixtures import ApiServer, CeleryWorker, RedisServer  # noqa: E402
from tiny_models import write_totalseg_fast_model  # noqa: E402
from weights_server import FileServer  # noqa: E402

from aiportal.models.backends import totalsegmentator  # noqa: E402
from aiportal.server.client import ServerClient  # noqa: E402

MODEL = "totalseg-total-fast"
RELEASE = "/v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip"
CT = "totalseg/example_ct_sm.nii.gz"


def _release_zip(folder: Path) -> bytes:
    """The release zip with tiny weights, padded with 1.5 MB of random bytes: larger than the 1 MB image cap."""
    labels = {label.name: label.value for label in totalsegmentator.entry_for(totalsegmentator.VARIANTS[1]).labels}
    rules = [(labels["vertebrae_L1"], ">", 200.5), (labels["lung_upper_lobe_left"], "<", -500.5)]
    dataset = write_totalseg_fast_model(folder, rules).parent
    (dataset / "padding.bin").write_bytes(np.random.default_rng(0).bytes(1_500_000))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(dataset.rglob("*")):
            archive.write(path, path.relative_to(dataset.parent).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """``aiportal models pack`` on a "connected machine" (its own weights folder) from the loopback publisher."""
    folder = tmp_path_factory.mktemp("connected")
    body = _release_zip(folder / "release")
    with FileServer({RELEASE: body}) as publisher:
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({MODEL: {"version": "2.0.0-test", "license": "Apache-2.0", "artifacts": [
            {"name": RELEASE.rsplit("/", 1)[1], "url": publisher.url(RELEASE), "layout": "totalseg-zip",
             "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}]}}))
        out = folder / "weights-bundle.tar"
        env = {**os.environ, "AIPORTAL_WEIGHTS_DIR": str(folder / "weights"),
               "TOTALSEG_HOME_DIR": str(folder / "totalseg"), "PYTHONPATH": str(Path(__file__).parent.parent)}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(name, None)
        done = subprocess.run([sys.executable, "-m", "aiportal.cli", "models", "pack", MODEL, "--out", str(out),
                               "--manifest", str(manifest)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    return out


def _tampered(bundle: Path, folder: Path) -> Path:
    """The bundle with one byte of the weights zip changed (same size: only the sha256 tells)."""
    data = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".zip"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    out = folder / "tampered.tar"
    out.write_bytes(bytes(data))
    return out


def test_admin_uploads_a_bundle_once_and_the_celery_worker_uses_it(bundle, shared_data, tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    shared = tmp_path / "shared-weights"  # the folders the API server and its workers share
    env = {"AIPORTAL_WEIGHTS_DIR": str(shared / "aiportal"), "TOTALSEG_HOME_DIR": str(shared / "totalseg"),
           "AIPORTAL_SERVER_ENGINE": "celery", "AIPORTAL_SERVER_BROKER_URL": redis_server.url,
           "AIPORTAL_SERVER_DATA_DIR": str(tmp_path / "server"),  # the default executor: the model in a child process
           "AIPORTAL_SERVER_MAX_UPLOAD_MB": "1", "AIPORTAL_SERVER_MAX_BUNDLE_MB": "4"}
    server = ApiServer(tmp_path / "server", env=env)
    admin = server.key("site-admin", "read,submit,audit,admin")
    submitter = server.key("ct-workstation", "read,submit")
    worker = None
    try:
        server.start()
        worker = CeleryWorker(env, [f"aiportal.{MODEL}"], tmp_path / "worker.log").start()
        client = ServerClient(server.url, api_key=submitter)

        job = client.wait(client.submit_file(shared_data / CT, MODEL, consent=True)["id"], timeout_s=180)
        assert job["state"] == "failed" and "models install" in (job["fix"] or "") + (job["error"] or ""), job

        url = f"{server.url}/v1/admin/weights"
        admin_headers = {"Authorization": f"Bearer {admin}"}
        answer = requests.post(url, data=bundle.read_bytes(), headers={"Authorization": f"Bearer {submitter}"},
                               timeout=60)
        assert answer.status_code == 403 and "admin" in answer.json()["error"]
        answer = requests.post(url, data=_tampered(bundle, tmp_path).read_bytes(), headers=admin_headers, timeout=60)
        assert answer.status_code == 400 and "sha256" in answer.json()["error"], answer.text
        assert str(tmp_path) not in answer.text  # no server folder in an answer
        answer = requests.post(url, data=b"\0" * (5 << 20), headers=admin_headers, timeout=60)
        assert answer.status_code == 413 and "4 MiB" in answer.json()["error"], answer.text
        answer = requests.post(url, data=b"not a bundle", headers=admin_headers, timeout=60)
        assert answer.status_code == 400 and "not a bundle" in answer.json()["error"], answer.text
        assert not list((shared / "totalseg").rglob("checkpoint_final.pth"))  # nothing installed by the refusals
        assert not list((tmp_path / "server" / "weights-uploads").iterdir())  # and nothing left over

        assert bundle.stat().st_size > 1 << 20  # above the image cap: bundles have their own
        answer = ServerClient(server.url, api_key=admin).install_weights_bundle(bundle)  # streamed from the file
        (installed,) = answer["models"]
        assert installed["model_id"] == MODEL and installed["status"] == "installed" and installed["files"] >= 5
        assert installed["version"] == "2.0.0-test" and str(tmp_path) not in json.dumps(answer)
        checks = requests.get(url, headers=admin_headers, timeout=60).json()
        assert [(c["model_id"], c["ok"]) for c in checks] == [(MODEL, True)], checks
        assert requests.post(url, data=bundle.read_bytes(), headers=admin_headers,
                             timeout=120).json()["models"][0]["status"] == "already installed"

        job = client.wait(client.submit_file(shared_data / CT, MODEL, consent=True)["id"], timeout_s=300)
        assert job["state"] == "done", (job, worker.log_tail())
        volumes = job["result"]["volumes_ml"]
        assert set(volumes) == {"vertebrae_L1", "lung_upper_lobe_left"}, volumes  # what the tiny weights label
        assert all(value > 0 for value in volumes.values())
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        redis_server.stop()
