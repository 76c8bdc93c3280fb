"""Trust on first use: a file without a published sha256 is pinned at its first download, later ones must match.

TotalSegmentator publishes no sha256 for its release zips, so ``aiportal models install`` pins the
first download's (loudly: UNVERIFIED on the CLI, TRUST ON FIRST USE in ``models verify``). Served by a
loopback server: a reinstall of the same file passes the pin; the publisher's file changed by one byte
is refused (install and pack) and the installed model stays as it was; ``--forget-pin`` trusts it anew.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from weights_server import FileServer

from aiportal.errors import ModelError
from aiportal.weights import pins
from aiportal.weights.bundle import pack
from aiportal.weights.install import install
from aiportal.weights.manifest import Artifact, ModelWeights
from aiportal.weights.verify import verify

REPO = Path(__file__).resolve().parent.parent
MODEL = "totalseg-total-fast"
PATH = "/v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip"


def _release(checkpoint: bytes) -> bytes:
    """A zip in TotalSegmentator's release layout (install checks the layout, not the network)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        folder = "Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer__nnUNetPlans__3d_fullres"
        archive.writestr(f"{folder}/fold_0/checkpoint_final.pth", checkpoint)
        archive.writestr(f"{folder}/plans.json", "{}")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch):
    monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AIPORTAL_WEIGHTS_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_first_download_is_pinned_and_later_ones_must_match(homes):
    original, changed = _release(b"weights-v1" * 1000), _release(b"weights-v1" * 999 + b"weights-v2")
    assert len(original) == len(changed)  # same size: only the sha256 tells them apart
    with FileServer({PATH: original}) as server:
        url = server.url(PATH)
        weights = ModelWeights(MODEL, "2.0.0", "Apache-2.0", (Artifact(PATH.rsplit("/", 1)[1], url, "totalseg-zip"),))
        first = install(weights)
        assert first.warning.startswith("UNVERIFIED: no published sha256") and "pinned now" in first.warning
        (pinned,) = pins.read_pins().values()
        receipt = json.loads(first.receipt.read_text())
        assert pinned.sha256 == receipt["artifacts"][0]["sha256"] and pinned.size == len(original)
        assert receipt["artifacts"][0]["checked_against"].startswith("none (first download: sha256 pinned now")

        again = install(weights, force=True)  # the same file: checked against the pin
        assert not again.unverified and again.pinned == [PATH.rsplit("/", 1)[1]]
        assert again.warning.startswith("TRUST ON FIRST USE")
        assert json.loads(again.receipt.read_text())["artifacts"][0]["checked_against"].startswith("pin (trust")

        server.files[PATH] = changed  # the publisher (or something on the way) now serves another file
        with pytest.raises(ModelError, match="the pin of its first download") as refused:
            install(weights, force=True)
        assert "--force --forget-pin" in refused.value.fix
        assert not list((homes / "weights" / "downloads").rglob("*.zip"))  # deleted
        (check,) = verify([MODEL], embedded=False)  # the installed model is untouched
        assert check.ok and "TRUST ON FIRST USE" in check.line()
        with pytest.raises(ModelError, match="the pin of its first download"):
            pack([MODEL], homes / "bundle.tar", manifest=_manifest(homes, url))
        assert not (homes / "bundle.tar").exists()

        command = [sys.executable, "-m", "aiportal.cli", "models", "install", MODEL, "--manifest",
                   str(_manifest(homes, url)), "--yes", "--force", "--forget-pin"]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        assert "forgot the sha256 pinned for" in done.stdout and "UNVERIFIED" in done.stderr
    assert pins.read_pins()[url].sha256 != pinned.sha256  # the new file is the pin now
    verified = subprocess.run([sys.executable, "-m", "aiportal.cli", "models", "verify", MODEL],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert verified.returncode == 0 and "TRUST ON FIRST USE" in verified.stdout


def _manifest(homes: Path, url: str) -> Path:
    path = homes / "manifest.json"
    path.write_text(json.dumps({MODEL: {"version": "2.0.0", "license": "Apache-2.0", "artifacts": [
        {"name": PATH.rsplit("/", 1)[1], "url": url, "layout": "totalseg-zip"}]}}))
    return path
