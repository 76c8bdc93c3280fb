"""MONAI bundles fetched by ``monai.bundle.download`` (layout ``monai-bundle``), from a loopback server.

A tiny bundle in MONAI's real format (Testing/tiny_bundle.py) is zipped as the model zoo publishes
them; ``aiportal models install`` fetches it through ``monai.bundle.download(url=...)``, checks the zip's
size and sha256, installs it, and the installed bundle segments a real CT crop. One changed byte is
refused, a 404 is a clear error, and the bundle packs and imports like any other.
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

import pytest
from test_monai_deepbet import ct_crop as bundle_crop
from test_monai_deepbet import dice
from tiny_bundle import SOFT_TISSUE_HU, write_tiny_bundle
from weights_server import FileServer

from aiportal.errors import ModelError
from aiportal.models.backends.monai_bundle import MonaiBundleBackend
from aiportal.progress import CancelToken
from aiportal.weights.bundle import import_bundle, pack
from aiportal.weights.install import install
from aiportal.weights.manifest import manifest_for
from aiportal.weights.monai_fetch import _zip_folder

REPO = Path(__file__).resolve().parent.parent
PATH = "/model-zoo/releases/tiny_ct_bundle_v0.1.0.zip"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> bytes:
    folder = write_tiny_bundle(tmp_path_factory.mktemp("zoo") / "tiny_ct_bundle")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:  # as the zoo zips: the bundle's folder
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch):
    monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AIPORTAL_WEIGHTS_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _manifest(folder: Path, url: str, body: bytes | None) -> Path:
    digest = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)} if body else {}
    path = folder / "manifest.json"
    path.write_text(json.dumps({"tiny-monai": {"version": "0.1.0", "license": "Apache-2.0", "artifacts": [
        {"name": "tiny_ct_bundle", "url": url, "layout": "monai-bundle", **digest}]}}))
    return path


def test_monai_bundle_download_installs_then_segments(published, homes, shared_data):
    with FileServer({PATH: published}) as server:
        manifest = _manifest(homes, server.url(PATH), published)
        command = [sys.executable, "-m", "aiportal.cli", "models", "install", "tiny-monai", "--manifest",
                   str(manifest), "--yes"]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        assert [r["path"] for r in server.behaviour.requests] == [PATH]  # fetched by MONAI's downloader
    assert "UNVERIFIED" not in done.stderr  # the manifest publishes the sha256
    (line,) = [line for line in done.stdout.splitlines() if "--model monai:" in line]
    bundle = Path(line.split("--model monai:", 1)[1])
    assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "models" / "model.pt").is_file()
    receipt = json.loads((homes / "weights" / "receipts" / "tiny-monai.json").read_text())
    assert receipt["artifacts"][0]["sha256"] == hashlib.sha256(published).hexdigest()
    assert receipt["artifacts"][0]["checked_against"] == "manifest"
    assert not list((homes / "weights").rglob(".monai-*"))  # MONAI's own download folder is gone

    crop = bundle_crop(shared_data, [[0, 1], [1, 1], [2, 1]])
    labels = MonaiBundleBackend(str(bundle)).run(crop, {"device": "cpu"}, lambda f, s: None,
                                                  CancelToken()).layers[0]
    assert dice(labels >= 1, crop.array >= SOFT_TISSUE_HU) >= 0.85


def test_changed_byte_404_and_pack_import(published, homes, tmp_path, monkeypatch):
    changed = bytearray(published)
    changed[len(changed) // 2] ^= 0xFF
    with FileServer({PATH: bytes(changed)}) as server:
        weights = manifest_for("tiny-monai", _manifest(homes, server.url(PATH), published))
        with pytest.raises(ModelError, match="tiny_ct_bundle from http://127.0.0.1:.* has sha256 .* refused and del"):
            install(weights)
        missing = manifest_for("tiny-monai", _manifest(homes, server.url("/no/such.zip"), published))
        with pytest.raises(ModelError, match="monai.bundle.download of tiny_ct_bundle from .* failed: HTTPError") \
                as not_found:
            install(missing)
        assert "HTTPS_PROXY" in not_found.value.fix
    assert not (homes / "weights" / "tiny-monai").exists()

    with FileServer({PATH: published}) as server:
        document = pack(["tiny-monai"], tmp_path / "weights.tar", manifest=_manifest(homes, server.url(PATH), None))
    (artifact,) = document["models"]["tiny-monai"]["artifacts"]
    assert artifact["layout"] == "monai-bundle" and artifact["sha256"] == hashlib.sha256(published).hexdigest()
    monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / "isolated"))
    (result,) = import_bundle(tmp_path / "weights.tar")
    assert result.use_as and (Path(result.use_as[0].removeprefix("monai:")) / "models" / "model.pt").is_file()


def test_a_fetched_bundle_folder_zips_to_the_same_sha256(tmp_path):
    """A source download (no URL) is zipped with fixed names and dates: one bundle, one sha256, so pins hold."""
    folder = write_tiny_bundle(tmp_path / "a" / "tiny_ct_bundle")
    _zip_folder(folder, tmp_path / "first.zip")
    os.utime(folder / "configs" / "metadata.json", (1e9, 1e9))  # a later download: other file dates
    _zip_folder(folder, tmp_path / "second.zip")
    assert (tmp_path / "first.zip").read_bytes() == (tmp_path / "second.zip").read_bytes()
    (folder / "models" / "model.pt").write_bytes(b"other weights")
    _zip_folder(folder, tmp_path / "third.zip")
    assert (tmp_path / "third.zip").read_bytes() != (tmp_path / "first.zip").read_bytes()
    names = zipfile.ZipFile(tmp_path / "first.zip").namelist()
    assert "tiny_ct_bundle/configs/metadata.json" in names and names == sorted(names)
