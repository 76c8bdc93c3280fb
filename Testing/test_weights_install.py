"""`aiportal models install` against loopback servers: resume, tamper, 404, slow, proxy, TLS, lock, disk.

The weights are tiny but in TotalSegmentator's real release layout (a zip of
``Dataset297_*/Trainer__Plans__Config/fold_0/checkpoint_final.pth``); after the install
TotalSegmentator itself runs on a real CT crop with them and gives the known answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_models import threshold_truth, write_totalseg_fast_model
from weights_server import FileServer, Proxy, make_ca_and_server_cert

from aiportal.errors import ModelError
from aiportal.models.backend import ModelInput
from aiportal.models.backends import totalsegmentator
from aiportal.progress import CancelToken
from aiportal.weights import store
from aiportal.weights.download import Transfer
from aiportal.weights.install import install
from aiportal.weights.manifest import Artifact, ModelWeights, manifest_for
from aiportal.weights.verify import verify

REPO = Path(__file__).resolve().parent.parent
MODEL = "totalseg-total-fast"


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory) -> tuple[bytes, list]:
    """TotalSegmentator's 3 mm 'total' dataset as a release zip (tiny weights; two classes by threshold)."""
    folder = tmp_path_factory.mktemp("release")
    labels = {label.name: label.value for label in totalsegmentator.entry_for(totalsegmentator.VARIANTS[1]).labels}
    rules = [(labels["vertebrae_L1"], ">", 200.5), (labels["lung_upper_lobe_left"], "<", -500.5)]
    dataset = write_totalseg_fast_model(folder, rules).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(dataset.rglob("*")):
            archive.write(path, path.relative_to(dataset.parent).as_posix())
    return buffer.getvalue(), rules


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch):
    """Fresh weights folder and TotalSegmentator home; no proxy from the machine's environment."""
    monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
                 "AIPORTAL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "AIPORTAL_WEIGHTS_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def weights_for(url: str, body: bytes, *, sha256: str | None = "auto", layout: str = "totalseg-zip") -> ModelWeights:
    digest = hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256
    name = url.rsplit("/", 1)[1]
    return ModelWeights(MODEL, "test-1", "Apache-2.0", (Artifact(name, url, layout, digest, len(body)),))


def no_leftovers(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.startswith((".staging-", ".old-", ".import-"))]
    assert not leftovers, leftovers


def test_manifest_follows_totalsegmentator_release_urls():
    weights = manifest_for(MODEL)
    (artifact,) = weights.artifacts
    assert artifact.url == ("https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/"
                            "Dataset297_TotalSegmentator_total_3mm_1559subj.zip")
    assert artifact.layout == "totalseg-zip" and weights.license == "Apache-2.0"
    licensed = manifest_for("totalseg-tissue_types")
    assert licensed.licensed and licensed.artifacts[0].licensed_task == "tissue_types"
    with pytest.raises(ModelError, match="models setup torch"):  # weights inside its wheel
        manifest_for("deepbet")


def test_interrupted_install_resumes_then_totalsegmentator_runs(release_zip, homes, shared_data):
    body, rules = release_zip
    path = "/v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip"
    with FileServer({path: body}) as server:
        server.behaviour.cut_first = 1  # the first transfer breaks off at 40 %
        stages = []
        result = install(weights_for(server.url(path), body), progress=lambda f, s: stages.append((f, s)))
        first, second = server.behaviour.requests
        assert "Range" not in first["headers"]
        assert second["headers"]["Range"] == f"bytes={int(len(body) * 0.4)}-"  # resumed, not restarted
        assert second["headers"]["If-Range"].startswith('"')
    assert any("resuming" in stage for _, stage in stages)
    assert any("ETA" in stage and "/s" in stage for _, stage in stages)
    assert stages[-1][0] == 1.0
    dataset = "Dataset297_TotalSegmentator_total_3mm_1559subj"
    assert result.folders == [homes / "totalseg" / "nnunet" / "results" / dataset]
    receipt = json.loads(result.receipt.read_text())
    assert receipt["artifacts"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert receipt["artifacts"][0]["checked_against"] == "manifest"
    assert set(receipt["files"]) == {str(p) for p in result.folders[0].rglob("*") if p.is_file()}
    for file, recorded in receipt["files"].items():
        assert hashlib.sha256(Path(file).read_bytes()).hexdigest() == recorded["sha256"]
    no_leftovers(homes)
    assert not (homes / "weights" / "downloads" / MODEL).exists()  # the archive is gone once installed

    # TotalSegmentator runs with the installed weights on a real CT crop and gives the known answer
    image = nib.load(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    hu = np.ascontiguousarray(np.asarray(image.dataobj).transpose(2, 1, 0)[:, 20:80, 20:100])
    ijk_to_ras = image.affine.copy()
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ np.array([20.0, 20.0, 0.0])
    backend = totalsegmentator.TotalSegmentatorBackend("total", "fast")
    labels = backend.run(ModelInput(hu, ijk_to_ras, "CT", "crop"), {"device": "cpu"}, lambda f, s: None,
                         CancelToken()).layers[0]
    np.testing.assert_array_equal(labels, threshold_truth(hu, rules))

    # verify names the file that changed
    (check,) = verify([MODEL], embedded=False)
    assert check.ok and "from download" in check.detail
    checkpoint = next(result.folders[0].rglob("checkpoint_final.pth"))
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    (check,) = verify([MODEL], embedded=False)
    assert not check.ok and check.problems == [f"CHANGED {checkpoint}"] and "--force" in check.fix


def test_a_broken_off_download_resumes_on_the_next_run(release_zip, homes):
    body, _ = release_zip
    with FileServer({"/w.zip": body}) as server:
        server.behaviour.cut_first = 1
        weights = weights_for(server.url("/w.zip"), body)
        with pytest.raises(ModelError, match="broke off.*run the same command again: it resumes"):
            install(weights, transfer=Transfer(retries=0))
        part = homes / "weights" / "downloads" / MODEL / "w.zip.part"
        kept = part.stat().st_size
        assert kept == int(len(body) * 0.4)
        assert not (homes / "totalseg" / "nnunet" / "results").exists() or \
            not any((homes / "totalseg" / "nnunet" / "results").iterdir())  # nothing half-installed
        install(weights, transfer=Transfer(retries=0))
        assert server.behaviour.requests[-1]["headers"]["Range"] == f"bytes={kept}-"
    assert totalsegmentator.check_weights("total", "fast")
    no_leftovers(homes)


def test_one_changed_byte_is_refused_and_deleted(release_zip, homes):
    body, _ = release_zip
    tampered = bytearray(body)
    tampered[len(tampered) // 3] ^= 0x01
    refused = r"w.zip from http://127.0.0.1:\d+/w.zip has sha256 .* refused and deleted"
    with FileServer({"/w.zip": bytes(tampered)}) as server, pytest.raises(ModelError, match=refused):
        install(weights_for(server.url("/w.zip"), body))
    assert not any((homes / "weights").rglob("w.zip*"))
    assert store.read_receipt(MODEL) is None
    assert not (homes / "totalseg").exists() or not any((homes / "totalseg").rglob("*.pth"))
    no_leftovers(homes)


def test_404_and_a_silent_server_say_what_and_how(release_zip, homes):
    body, _ = release_zip
    with FileServer({"/w.zip": body}) as server:
        with pytest.raises(ModelError, match="answered 404 Not Found.*models import"):
            install(weights_for(server.url("/missing.zip"), body))
        server.behaviour.delay = 2.0
        with pytest.raises(ModelError, match=r"127.0.0.1:\d+ sent nothing for 0.3 s.*HTTPS_PROXY"):
            install(weights_for(server.url("/w.zip"), body), transfer=Transfer(timeout=0.3, retries=0))


def test_hospital_network_tls_with_own_ca_through_a_proxy(release_zip, homes, monkeypatch):
    body, _ = release_zip
    ca, cert, key = make_ca_and_server_cert(homes / "pki")
    with FileServer({"/w.zip": body}, tls=(cert, key)) as server, Proxy() as proxy:
        url = server.url("/w.zip")
        with pytest.raises(ModelError, match="TLS certificate of 127.0.0.1:.* is not trusted.*--ca-bundle"):
            install(weights_for(url, body))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("AIPORTAL_CA_BUNDLE", str(ca))
        result = install(weights_for(url, body))
        assert proxy.seen == [f"CONNECT 127.0.0.1:{server.port}"]  # the proxy carried the TLS tunnel
    assert result.folders and totalsegmentator.check_weights("total", "fast")

    with FileServer({"/w.zip": body}) as plain, Proxy() as proxy:  # plain http is forwarded by the proxy
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        install(weights_for(plain.url("/w.zip"), body), force=True)
        assert proxy.seen == [f"GET {plain.url('/w.zip')}"]


def test_lock_and_free_disk(release_zip, homes, monkeypatch):
    body, _ = release_zip
    weights = weights_for("http://127.0.0.1:9/never.zip", body)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom aiportal.weights import store\n"
                               "with store.install_lock():\n    print('held', flush=True)\n    time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ModelError, match=rf"another install holds .*install.lock \(pid {holder.pid}\)"):
            install(weights, lock_timeout=0.5)
    finally:
        holder.kill()
        holder.wait()

    class Tiny:
        free = 10 << 20

    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: Tiny)
    with pytest.raises(ModelError, match=r"needs 0.1 GB free on the disk of .*weights, which has 0.0 GB"):
        install(weights)


def test_cli_asks_for_consent_and_installs_with_yes(release_zip, homes):
    body, _ = release_zip
    with FileServer({"/w.zip": body}) as server:
        manifest = homes / "manifest.json"
        manifest.write_text(json.dumps({MODEL: {"version": "test-1", "license": "Apache-2.0", "artifacts": [
            {"name": "w.zip", "url": server.url("/w.zip"), "sha256": hashlib.sha256(body).hexdigest(),
             "size": len(body), "layout": "totalseg-zip"}]}}))
        command = [sys.executable, "-m", "aiportal.cli", "models", "install", MODEL, "--manifest", str(manifest)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        refused = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        assert refused.returncode == 1
        assert "licence: Apache-2.0" in refused.stdout and f"{len(body) / 1e6:.0f} MB" in refused.stdout
        assert "run it again with --yes" in refused.stderr and not server.behaviour.requests
        done = subprocess.run([*command, "--yes"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert "installed into" in done.stdout
        again = subprocess.run([*command, "--yes"], capture_output=True, text=True, env=env)
        assert "already installed" in again.stdout and len(server.behaviour.requests) == 1
        by_hand = subprocess.run([*command, "--yes"], capture_output=True, text=True,  # no receipt in this folder
                                 env={**env, "AIPORTAL_WEIGHTS_DIR": str(homes / "other")})
        assert "weights already on disk (not installed by aiportal: add --force" in by_hand.stdout
        assert len(server.behaviour.requests) == 1
        verified = subprocess.run([sys.executable, "-m", "aiportal.cli", "models", "verify", MODEL],
                                  capture_output=True, text=True, env=env)
        assert verified.returncode == 0 and verified.stdout.startswith(f"ok      {MODEL}: ")


def test_the_desktop_install_button_offer_and_job(release_zip, homes, monkeypatch):
    from aiportal.weights.offer import install_function, weights_offer

    assert not weights_offer("classic-ct").installable  # a classical method: no button
    assert "models setup torch" in weights_offer("deepbet").tooltip  # weights inside its package
    offer = weights_offer(MODEL)
    assert offer.installable and not offer.installed
    assert "Licence: Apache-2.0" in offer.question and "releases/download/v2.0.0-weights" in offer.question
    body, _ = release_zip
    with FileServer({"/w.zip": body}) as server:
        manifest = homes / "manifest.json"
        manifest.write_text(json.dumps({MODEL: {"version": "test-1", "license": "Apache-2.0", "artifacts": [
            {"name": "w.zip", "url": server.url("/w.zip"), "layout": "totalseg-zip"}]}}))
        monkeypatch.setenv("AIPORTAL_WEIGHTS_MANIFEST", str(manifest))
        stages = []
        summary = install_function(MODEL)(lambda f, s: stages.append(s), CancelToken())
    # no published sha256 in this manifest: installed, but said loudly
    assert summary.startswith(f"{MODEL}: weights installed — UNVERIFIED: no published sha256 for w.zip")
    assert weights_offer(MODEL).installed
    (check,) = verify([MODEL], embedded=False)
    assert check.ok and "first download had no published sha256: w.zip" in check.detail


def test_licensed_task_downloads_with_the_stored_key(release_zip, homes):
    body, _ = release_zip
    with FileServer({"/download_weights": body}) as server:
        weights = ModelWeights("totalseg-tissue_types", "test", "TotalSegmentator licence", (
            Artifact("Dataset481_tissue_1559subj.zip", server.url("/download_weights"), "totalseg-zip",
                     licensed_task="tissue_types"),), licensed=True)
        with pytest.raises(ModelError, match="licensed and no licence key is stored.*totalseg-license"):
            install(weights)
        totalsegmentator.set_license("aca_WRONGKEY12345X")
        with pytest.raises(ModelError, match="answered 403 .*access refused.*licence key"):
            install(weights)
        totalsegmentator.set_license(server.license_key)
        result = install(weights)
        request = server.behaviour.requests[-1]["json"]
    assert request["license_number"] == server.license_key and request["task"] == "tissue_types"
    assert result.folders and result.warning.startswith("UNVERIFIED")
