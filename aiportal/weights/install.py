"""Installing a model's weights: fetch, check, unpack beside the target, then swap in whole.

A model is never half-installed: archives are downloaded (resumably) into ``downloads/``, checked
against the manifest's size and sha256, unpacked into a staging folder on the same disk and only
then renamed into place, folder by folder; the receipt, written last, records the sha256 of every
installed file. A file that fails its check is deleted and named in the error.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiportal import __version__
from aiportal.digests import file_sha256
from aiportal.errors import InputError, ModelError
from aiportal.progress import CancelToken, ProgressCallback, no_progress
from aiportal.weights import archive, pins, store
from aiportal.weights.download import DEFAULT_TRANSFER, Transfer, download
from aiportal.weights.manifest import Artifact, ModelWeights
from aiportal.weights.pins import Pin

MONAI_LAYOUTS = ("monai-bundle-zip", "monai-bundle")
_DATASET_FOLDER = re.compile(r"^Dataset\d{3,}_")
MARGIN = 100 << 20


@dataclass
class InstallResult:
    model_id: str
    folders: list[Path]
    receipt: Path
    unverified: list[str] = field(default_factory=list)  # first download of files without a published sha256
    pinned: list[str] = field(default_factory=list)  # files without a published sha256, checked against their pin
    already: bool = False
    use_as: list[str] = field(default_factory=list)  # `--model` values of folder models it installed

    @property
    def warning(self) -> str | None:
        notes = []
        if self.unverified:
            notes.append(f"UNVERIFIED: no published sha256 for {', '.join(self.unverified)}; installed as downloaded "
                         "(trust on first use: its sha256 is pinned now, so later downloads, `aiportal models "
                         "verify` and bundles must match it)")
        if self.pinned:
            notes.append(f"TRUST ON FIRST USE: {', '.join(self.pinned)} matched the sha256 pinned at its first "
                         "download (the publisher gives none)")
        return "; ".join(notes) or None


def _totalseg_weights_folder(home: str | Path | None) -> Path:
    from aiportal.models.backends.totalsegmentator import weights_folder

    return weights_folder(home)


def _licence_key(home: str | Path | None) -> str:
    from aiportal.models.backends import totalsegmentator as ts

    key = ts._license_key(ts.totalseg_home(home))
    if not key:
        raise ModelError("this TotalSegmentator task is licensed and no licence key is stored",
                         f"request a key at {ts.LICENSE_URL} and store it with `aiportal models totalseg-license KEY`")
    return key


def check_file(path: Path, artifact: Artifact, origin: str, digest: str | None = None,
               listed_by: str = "the manifest", fix: str = "") -> str:
    """The file's sha256 (``digest`` when already known); deletes the file and raises when size or sha256
    differ from what ``listed_by`` (the manifest, or a trust-on-first-use pin) lists."""
    size = path.stat().st_size
    digest = digest or file_sha256(path)
    problem = None
    if artifact.size is not None and size != artifact.size:
        problem = f"has {size} bytes, {listed_by} lists {artifact.size}"
    elif artifact.sha256 and digest != artifact.sha256.lower():
        problem = f"has sha256 {digest[:16]}…, {listed_by} lists {artifact.sha256[:16]}…"
    if problem:
        path.unlink(missing_ok=True)
        raise ModelError(f"{artifact.name} from {origin} {problem}: refused and deleted",
                         fix or "the file was damaged or altered on the way: run the command again; if it repeats, "
                         "your proxy or mirror serves a different file")
    return digest


def fetch_artifact(weights: ModelWeights, artifact: Artifact, folder: Path, *, transfer: Transfer,
                   progress: ProgressCallback, cancel: CancelToken | None, totalseg_home=None,
                   pin: Pin | None = None) -> tuple[Path, str]:
    """Download one artifact into ``folder`` (resuming) and check it; returns the file and its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / artifact.name
    post = None
    if artifact.licensed_task:
        from aiportal.models.backends.totalsegmentator import _version

        post = {"license_number": _licence_key(totalseg_home), "task": artifact.licensed_task,
                "version": _version()}
    digest = None
    if artifact.layout == "monai-bundle":  # MONAI's own downloader (monai.bundle.download)
        from aiportal.weights.monai_fetch import monai_download

        target, digest = monai_download(artifact, weights.version, folder, progress)
    elif not target.is_file():  # else: downloaded whole by an earlier run that stopped before installing
        target, digest = download(artifact.url, target, transfer=transfer, expected_size=artifact.size,
                                  post_json=post, progress=progress, cancel=cancel)
    if pin is None:
        return target, check_file(target, artifact, artifact.origin, digest)
    return target, check_file(target, artifact, artifact.origin, digest,
                              f"the pin of its first download ({pin.first_seen})",
                              "the publisher's file is not the one you first downloaded: run again; if it repeats "
                              "and the publisher really re-released it, `aiportal models install "
                              f"{weights.model_id} --force --forget-pin` trusts the new file")


def _dataset_relative(name: str) -> str | None:
    """``anything/Dataset297_x/a/b`` -> ``Dataset297_x/a/b`` (the part TotalSegmentator loads)."""
    parts = name.split("/")
    for index, part in enumerate(parts):
        if _DATASET_FOLDER.match(part):
            return "/".join(parts[index:])
    return None


def _unpack(artifact: Artifact, path: Path, staging: Path, digest: str) -> dict[str, str]:
    """Unpack into ``staging``; returns the sha256 of each file by its path relative to ``staging``."""
    if artifact.layout == "file":
        shutil.copy2(path, staging / artifact.name)
        return {artifact.name: digest}
    keep = _dataset_relative if artifact.layout == "totalseg-zip" else (lambda name: name)
    written = archive.extract(path, staging, keep=keep)
    if artifact.layout == "totalseg-zip":
        datasets = [p for p in staging.iterdir() if p.is_dir() and _DATASET_FOLDER.match(p.name)]
        if not datasets or not all(any(d.glob("*__*__*/fold_*/checkpoint_final.pth")) for d in datasets):
            raise InputError(f"{artifact.name} holds no complete TotalSegmentator dataset "
                             "(Dataset###_*/Trainer__Plans__Config/fold_N/checkpoint_final.pth)",
                             "the archive is not TotalSegmentator weights: check the manifest's URL")
    elif artifact.layout == "nnunet-zip" and not any(staging.rglob("fold_*/checkpoint_final.pth")):
        raise InputError(f"{artifact.name} holds no nnU-Net results folder (fold_N/checkpoint_final.pth)",
                         "give the zip nnU-Net's export (nnUNetv2_export_model_to_zip) writes")
    elif artifact.layout in MONAI_LAYOUTS and not any(staging.rglob("configs/metadata.json")):
        raise InputError(f"{artifact.name} holds no MONAI bundle (configs/metadata.json)",
                         "give a bundle zip as `monai.bundle download` fetches it")
    return {file.relative_to(staging).as_posix(): sha for file, sha in written.items()}


def _swap_in(staged: Path, target: Path) -> None:
    """Replace ``target`` by ``staged`` (same disk) so that a reader sees the old or the new folder, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{time.time_ns()}")
        target.rename(old)
    staged.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_models(weights: ModelWeights, folder: Path) -> list[str]:
    """``nnunet:PATH`` / ``monai:PATH`` for the nnU-Net results folders and MONAI bundles under ``folder``."""
    layouts = {a.layout for a in weights.artifacts}
    found = []
    if "nnunet-zip" in layouts:
        found += sorted({f"nnunet:{p.parent.parent}" for p in folder.rglob("fold_*/checkpoint_final.pth")})
    if layouts & set(MONAI_LAYOUTS):
        found += sorted(f"monai:{p.parent.parent}" for p in folder.rglob("configs/metadata.json"))
    return found


def is_installed(weights: ModelWeights) -> bool:
    receipt = store.read_receipt(weights.model_id)
    return bool(receipt and receipt.get("version") == weights.version
                and all(Path(p).is_file() for p in receipt.get("files", {})))


def install(weights: ModelWeights, *, transfer: Transfer = DEFAULT_TRANSFER, progress: ProgressCallback = no_progress,
            cancel: CancelToken | None = None, force: bool = False, lock_timeout: float = 600.0,
            local_files: dict[str, Path] | None = None, origin: str | None = None,
            totalseg_home: str | Path | None = None, keep_archives: bool = False) -> InstallResult:
    """Install ``weights`` (downloaded, or from ``local_files`` by artifact name when importing a bundle)."""
    if not weights.artifacts:
        raise ModelError(f"the manifest of {weights.model_id} lists no files", "add its artifacts to the manifest")
    if not force and is_installed(weights):
        return InstallResult(weights.model_id, [], store.receipt_path(weights.model_id), already=True)
    root = store.weights_dir()
    with store.install_lock(lock_timeout, on_wait=lambda: progress(0.0, "waiting for another install to finish")):
        if not force and is_installed(weights):  # the install we waited for did it
            return InstallResult(weights.model_id, [], store.receipt_path(weights.model_id), already=True)
        published = {a.name for a in weights.artifacts if a.sha256}
        weights, used_pins = pins.with_pins(weights) if local_files is None else (weights, {})
        size = weights.size or 0
        ts_folder = _totalseg_weights_folder(totalseg_home)
        if local_files is None:
            store.check_free_disk(root, int(size * 2.2) + MARGIN, f"installing {weights.model_id}")
        downloads = root / "downloads" / weights.model_id
        fetched: list[tuple[Artifact, Path, str]] = []
        for index, artifact in enumerate(weights.artifacts):
            def step(fraction: float, stage: str, index=index) -> None:
                progress(0.9 * (index + fraction) / len(weights.artifacts), stage)

            if local_files is not None:
                path = local_files[artifact.name]
                fetched.append((artifact, path, check_file(path, artifact, origin or str(path))))
            else:
                path, digest = fetch_artifact(weights, artifact, downloads, transfer=transfer, progress=step,
                                              cancel=cancel, totalseg_home=totalseg_home,
                                              pin=used_pins.get(artifact.name))
                fetched.append((artifact, path, digest))
        placed: list[Path] = []
        files: dict[str, dict] = {}  # installed file -> sha256 and size, for the receipt
        for artifact, path, archive_digest in fetched:
            destination = ts_folder if artifact.layout == "totalseg-zip" else root / weights.model_id
            store.check_free_disk(destination.parent, int(path.stat().st_size * 1.2) + MARGIN,
                                  f"unpacking {artifact.name}")
            destination.mkdir(parents=True, exist_ok=True) if artifact.layout == "totalseg-zip" else \
                destination.parent.mkdir(parents=True, exist_ok=True)
            progress(0.92, f"unpacking {artifact.name}")
            staging_parent = destination if artifact.layout == "totalseg-zip" else destination.parent
            with tempfile.TemporaryDirectory(dir=staging_parent, prefix=".staging-") as staging_name:
                staging = Path(staging_name)
                # staging/X ends up as destination/X for every layout (datasets, or the model folder's content)
                for relative, sha in _unpack(artifact, path, staging, archive_digest).items():
                    files[str(destination / relative)] = {"sha256": sha, "size": (staging / relative).stat().st_size}
                if artifact.layout == "totalseg-zip":
                    for dataset in sorted(p for p in staging.iterdir() if p.is_dir()):
                        _swap_in(dataset, destination / dataset.name)
                        placed.append(destination / dataset.name)
                else:
                    model_folder = staging / "model"
                    model_folder.mkdir()
                    for child in [p for p in staging.iterdir() if p != model_folder]:
                        child.rename(model_folder / child.name)
                    if destination in placed:  # several artifacts of one model share its folder
                        for child in model_folder.iterdir():
                            _swap_in(child, destination / child.name)
                    else:
                        _swap_in(model_folder, destination)
                        placed.append(destination)
        unverified = [artifact.name for artifact in weights.artifacts if not artifact.sha256]
        for artifact, path, digest in fetched:
            if local_files is None and not artifact.sha256:
                pins.pin(weights.model_id, artifact, digest, path.stat().st_size)
        receipt = {
            "model_id": weights.model_id, "version": weights.version, "license": weights.license,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "aiportal": __version__,
            "origin": origin or "download",
            "artifacts": [{**{k: v for k, v in vars(artifact).items() if v is not None},
                           "sha256": digest, "size": path.stat().st_size,
                           "checked_against": _checked_against(artifact, published, used_pins)}
                          for artifact, path, digest in fetched],
            "folders": [str(p) for p in placed], "files": dict(sorted(files.items())),
        }
        path = store.write_receipt(receipt)
        if local_files is None and not keep_archives:
            shutil.rmtree(downloads, ignore_errors=True)
        progress(1.0, f"{weights.model_id} installed")
        use_as = [name for folder in placed for name in folder_models(weights, folder)]
        return InstallResult(weights.model_id, placed, path, unverified, sorted(used_pins), use_as=use_as)


def _checked_against(artifact: Artifact, published: set[str], used_pins: dict[str, Pin]) -> str:
    if artifact.name in used_pins:
        return f"pin (trust on first use, pinned {used_pins[artifact.name].first_seen})"
    if artifact.name in published or artifact.sha256:
        return "manifest"
    return "none (first download: sha256 pinned now, trust on first use)"


def pinned(weights: ModelWeights) -> ModelWeights:
    """The manifest with the sha256 and sizes a previous install recorded filled in (for bundles)."""
    receipt = store.read_receipt(weights.model_id) or {}
    recorded = {a["name"]: a for a in receipt.get("artifacts", [])} if receipt.get("version") == weights.version \
        else {}
    return replace(weights, artifacts=tuple(
        replace(a, sha256=a.sha256 or recorded.get(a.name, {}).get("sha256"),
                size=a.size or recorded.get(a.name, {}).get("size")) for a in weights.artifacts))


def receipt_json(model_id: str) -> str:
    return json.dumps(store.read_receipt(model_id), indent=2)
