"""Air-gapped bundles: pack on a "connected" home, import on a clean one, run; hostile archives refused.

Three formats, each tiny but real: TotalSegmentator's release zip, an nnU-Net results zip and a
MONAI bundle zip, served by a loopback HTTP server to ``pack``; the server is gone before
``import``. The imported nnU-Net model and MONAI bundle then segment a real CT crop.
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
from test_monai_deepbet import ct_crop as bundle_crop
from test_monai_deepbet import dice
from test_nnunet_totalseg import RULES, ct_crop, tiny_nnunet
from tiny_bundle import SOFT_TISSUE_HU, write_tiny_bundle
from tiny_models import threshold_truth, write_totalseg_fast_model
from weights_server import FileServer

from aiportal.errors import InputError, ModelError
from aiportal.models.backends import totalsegmentator
from aiportal.models.backends.monai_bundle import MonaiBundleBackend
from aiportal.models.backends.nnunet import NnUNetBackend
from aiportal.progress import CancelToken
from aiportal.weights import archive
from aiportal.weights.bundle import import_bundle, pack
from aiportal.weights.verify import verify

REPO = Path(__file__).resolve().parent.parent


def zipped(folder: Path, under: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zip_file:
        for path in sorted(folder.rglob("*")):
            zip_file.write(path, path.relative_to(under).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, bytes]:
    """What the three publishers serve: URL path -> bytes."""
    root = tmp_path_factory.mktemp("publishers")
    totalseg = write_totalseg_fast_model(root / "ts", [(1, ">", 200.5)]).parent
    nnunet = tiny_nnunet(root / "nn").parent  # Dataset101_TinyThreshold
    monai = write_tiny_bundle(root / "mb" / "tiny_ct_bundle")
    return {"/ts/Dataset297_TotalSegmentator_total_3mm_1559subj.zip": zipped(totalseg, totalseg.parent),
            "/nn/Dataset101_TinyThreshold.zip": zipped(nnunet, nnunet.parent),
            "/mb/tiny_ct_bundle.zip": zipped(monai, monai.parent)}


@pytest.fixture
def home(tmp_path, monkeypatch):
    def use(name: str) -> Path:
        monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / name / "weights"))
        monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / name / "totalseg"))
        (tmp_path / name).mkdir(exist_ok=True)
        return tmp_path / name

    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AIPORTAL_WEIGHTS_MANIFEST"):
        monkeypatch.delenv(variable, raising=False)
    return use


def manifest(server: FileServer, published: dict[str, bytes], folder: Path) -> Path:
    def artifact(path: str, layout: str, with_digest: bool = True) -> dict:
        body = published[path]
        return {"name": path.rsplit("/", 1)[1], "url": server.url(path), "layout": layout,
                **({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)} if with_digest else {})}

    paths = list(published)
    document = {
        "totalseg-total-fast": {"version": "test", "license": "Apache-2.0",
                                "artifacts": [artifact(paths[0], "totalseg-zip")]},
        "tiny-nnunet": {"version": "1", "license": "CC-BY-4.0", "artifacts": [artifact(paths[1], "nnunet-zip")]},
        # no published digest: pack records the one it downloaded, import checks against that
        "tiny-monai": {"version": "0.1.0", "license": "Apache-2.0",
                       "artifacts": [artifact(paths[2], "monai-bundle-zip", with_digest=False)]},
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(document))
    return path


def test_pack_import_round_trip_on_a_clean_machine_then_run(published, home, tmp_path, shared_data):
    connected = home("connected")
    bundle = tmp_path / "sneakernet" / "weights.tar"
    with FileServer(published) as server:
        document = pack(["totalseg-total-fast", "tiny-nnunet", "tiny-monai"], bundle,
                        manifest=manifest(server, published, connected))
    assert not (connected / "weights").exists() or not any((connected / "weights").rglob("*.zip"))
    for model in document["models"].values():
        (artifact,) = model["artifacts"]
        assert artifact["sha256"] == hashlib.sha256(published["/" + artifact["url"].split("/", 3)[3]]).hexdigest()
    with tarfile.open(bundle) as tar:
        assert tar.getnames()[0] == "manifest.json" and len(tar.getnames()) == 4

    isolated = home("isolated")  # the server is gone: only the bundle crosses
    results = {r.model_id: r for r in import_bundle(bundle)}
    assert set(results) == {"totalseg-total-fast", "tiny-nnunet", "tiny-monai"}
    assert totalsegmentator.check_weights("total", "fast")
    assert results["totalseg-total-fast"].folders[0].is_relative_to(isolated / "totalseg")
    checks = verify(list(results), embedded=False)
    assert all(check.ok for check in checks) and all("from bundle weights.tar" in c.detail for c in checks)
    assert [c.detail for c in checks if "first download had no published sha256" in c.detail] == []
    assert import_bundle(bundle)[0].already  # a second import changes nothing

    (nnunet_model,) = results["tiny-nnunet"].use_as
    volume = ct_crop(shared_data)
    labels = NnUNetBackend(nnunet_model.removeprefix("nnunet:")).run(
        volume, {"use_tta": False, "device": "cpu"}, lambda f, s: None, CancelToken()).layers[0]
    np.testing.assert_array_equal(labels, threshold_truth(volume.array, RULES))
    (monai_model,) = results["tiny-monai"].use_as
    crop = bundle_crop(shared_data, [[0, 1], [1, 1], [2, 1]])
    labels = MonaiBundleBackend(monai_model.removeprefix("monai:")).run(
        crop, {"device": "cpu"}, lambda f, s: None, CancelToken()).layers[0]
    assert dice(labels >= 1, crop.array >= SOFT_TISSUE_HU) >= 0.85

    # verify names a changed and a missing file; the CLI exits 1
    model_file = next(Path(monai_model.removeprefix("monai:")).rglob("model.pt"))
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    plans = next(Path(nnunet_model.removeprefix("nnunet:")).rglob("plans.json"))
    plans.unlink()
    checks = {c.model_id: c for c in verify(embedded=False)}
    assert checks["tiny-monai"].problems == [f"CHANGED {model_file}"]
    assert checks["tiny-nnunet"].problems == [f"MISSING {plans}"]
    cli = subprocess.run([sys.executable, "-m", "aiportal.cli", "models", "verify", "tiny-monai"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cli.returncode == 1 and f"CHANGED {model_file}" in cli.stdout and "--force" in cli.stdout


def rewrite_bundle(source: Path, target: Path, change) -> Path:
    """A copy of bundle ``source`` with ``change(name, data) -> data`` applied (and extra members appended)."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for info in old.getmembers():
            data = change(info.name, old.extractfile(info).read())
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))
    return target


def test_tampered_or_padded_bundles_are_refused(published, home, tmp_path):
    home("connected")
    bundle = tmp_path / "good.tar"
    with FileServer(published) as server:
        pack(["tiny-nnunet"], bundle, manifest=manifest(server, published, tmp_path))
    home("isolated")

    def flip(name: str, data: bytes) -> bytes:
        if name.endswith(".zip"):
            data = bytearray(data)
            data[len(data) // 2] ^= 0x01
        return bytes(data)

    tampered = rewrite_bundle(bundle, tmp_path / "tampered.tar", flip)
    with pytest.raises(ModelError, match="Dataset101_TinyThreshold.zip from bundle tampered.tar has sha256 .*refused"):
        import_bundle(tampered)
    padded = tmp_path / "padded.tar"
    rewrite_bundle(bundle, padded, lambda name, data: data)
    with tarfile.open(padded, "a") as tar:
        info = tarfile.TarInfo("files/tiny-nnunet/run_me.sh")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"rm\n"))
    with pytest.raises(InputError, match="holds files its manifest does not list"):
        import_bundle(padded)
    with pytest.raises(InputError, match="does not hold other-model"):
        import_bundle(bundle, models=["other-model"])
    assert not any((tmp_path / "isolated").rglob("*.pth"))

    # `aiportal serve --weights-bundle FILE` installs the good one before serving
    from aiportal.cli import build_parser
    from aiportal.weights.cli import import_for_server

    assert build_parser().parse_args(["serve", "--weights-bundle", str(bundle)]).weights_bundle == bundle
    server_home = home("server")
    assert import_for_server(bundle) == ["tiny-nnunet"]
    assert any((server_home / "weights" / "tiny-nnunet").rglob("checkpoint_final.pth"))


def hostile_zip(path: Path, name: str, data: bytes = b"x", mode: int | None = None, bomb: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zip_file:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.external_attr = mode << 16
        zip_file.writestr(info, b"\0" * (64 << 20) if bomb else data)
    return path


def hostile_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize(("make", "refusal"), [
    (lambda p: hostile_zip(p / "a.zip", "../../evil.txt"), "climbs out"),
    (lambda p: hostile_zip(p / "a.zip", "/tmp/evil.txt"), "absolute path"),
    (lambda p: hostile_zip(p / "a.zip", "C:/evil.txt"), "absolute path"),
    (lambda p: hostile_zip(p / "a.zip", "Dataset1_x/link", b"/etc/passwd", mode=0o120777), "link or a special"),
    (lambda p: hostile_zip(p / "a.zip", "Dataset1_x/zeros.bin", bomb=True), "zip bomb"),
    (lambda p: hostile_tar(p / "a.tar", "files/../../evil.txt"), "climbs out"),
    (lambda p: hostile_tar(p / "a.tar", "files/m/link", tarfile.SYMTYPE, "/etc/passwd"), "link or a special"),
    (lambda p: hostile_tar(p / "a.tar", "files/m/hard", tarfile.LNKTYPE, "manifest.json"), "link or a special"),
    (lambda p: hostile_tar(p / "a.tar", "files/m/fifo", tarfile.FIFOTYPE), "link or a special"),
])
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, make, refusal):
    hostile = make(tmp_path)
    target = tmp_path / "out" / "deep" / "er"
    with pytest.raises(InputError, match=refusal):
        archive.extract(hostile, target)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    if hostile.suffix == ".tar":  # as a bundle too
        with pytest.raises(InputError, match=refusal):
            import_bundle(hostile)


def test_size_cap_and_lying_headers(tmp_path):
    big = hostile_zip(tmp_path / "big.zip", "Dataset1_x/a.bin", b"a" * 5000)
    with pytest.raises(InputError, match="unpacks to .* more than its .* cap"):
        archive.extract(big, tmp_path / "out", max_total=4000)
    liar = tmp_path / "liar.tar"
    with tarfile.open(liar, "w") as tar:  # declares 3 bytes, but the member reader is swapped for a longer one
        info = tarfile.TarInfo("a.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(liar) as tar:
        (member,) = archive.members(liar, tar)
        longer = archive.Member(member.name, member.size, False, lambda: io.BytesIO(b"abcdef"))
        with pytest.raises(InputError, match="holds more bytes than its header says"):
            archive.copy_member(liar, longer, tmp_path / "out" / "a.bin")


def test_import_weights_refuses_hostile_zips_too(tmp_path):
    bomb = hostile_zip(tmp_path / "bomb.zip", "Dataset297_x/zeros.bin", bomb=True)
    with pytest.raises(InputError, match="zip bomb"):
        totalsegmentator.import_weights(bomb, tmp_path / "home")
    link = hostile_zip(tmp_path / "link.zip", "Dataset297_x/link", b"/etc/passwd", mode=0o120777)
    with pytest.raises(InputError, match="link or a special file"):
        totalsegmentator.import_weights(link, tmp_path / "home")
    assert not any((tmp_path / "home").rglob("Dataset297_x"))
