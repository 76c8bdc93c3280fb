"""Air-gapped sites: one bundle file carries the weights of several models and their manifest.

A bundle is an uncompressed tar (the weights are zips already): ``manifest.json`` first (format,
models with version, licence, source URL, size and sha256 of every file), then
``files/MODEL_ID/NAME``. :func:`pack` downloads and checks every file on a connected machine;
:func:`import_bundle` opens the bundle as hostile input (no links, no paths out, size caps, only
files the manifest lists), re-checks every sha256, also against the project's own manifest where
it publishes one, and installs through the same staged, locked path as a download.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiportal import __version__
from aiportal.errors import InputError
from aiportal.progress import CancelToken, ProgressCallback, no_progress
from aiportal.weights import archive, store
from aiportal.weights.download import DEFAULT_TRANSFER, Transfer
from aiportal.weights.install import InstallResult, fetch_artifact, install, pinned
from aiportal.weights.manifest import ModelWeights, from_json, manifest_for
from aiportal.weights.pins import pin, with_pins

FORMAT = "aiportal-weights-bundle"
MAX_MANIFEST = 4 << 20


def pack(model_ids: list[str], out: Path, *, manifest: str | Path | None = None, transfer: Transfer = DEFAULT_TRANSFER,
         progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> dict:
    """Download (checked) every file of ``model_ids`` and write them with their manifest into ``out``."""
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists already", "choose a new file name for the bundle, or delete that file")
    plans = [with_pins(manifest_for(model_id, manifest)) for model_id in model_ids]
    entries: dict[str, dict] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".pack-") as work_name:
        work = Path(work_name)
        files: list[tuple[str, Path]] = []
        for number, (weights, used_pins) in enumerate(plans):
            weights = pinned(weights)
            artifacts = []
            for artifact in weights.artifacts:
                def step(fraction: float, stage: str, number: int = number) -> None:
                    progress(0.9 * (number + fraction) / len(plans), stage)

                path, digest = fetch_artifact(weights, artifact, work / weights.model_id, transfer=transfer,
                                              progress=step, cancel=cancel, pin=used_pins.get(artifact.name))
                if not artifact.sha256:  # first download anywhere on this machine: pinned (trust on first use)
                    pin(weights.model_id, artifact, digest, path.stat().st_size)
                artifacts.append(replace(artifact, sha256=digest, size=path.stat().st_size))
                files.append((f"files/{weights.model_id}/{artifact.name}", path))
            entry = replace(weights, artifacts=tuple(artifacts)).to_json()
            entry.pop("model_id")
            entries[weights.model_id] = entry
        document = {"format": FORMAT, "format_version": 1, "aiportal": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": entries}
        partial = work / "bundle.tar"
        progress(0.95, f"writing {out.name}")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(document, indent=2).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for name, path in files:
                tar.add(path, arcname=name, recursive=False)
        partial.rename(out)  # the bundle appears whole or not at all
    progress(1.0, f"{out.name}: {len(entries)} models")
    return document


def _work_dir() -> Path:
    folder = store.weights_dir()  # the weights' own disk: /tmp may be too small (or RAM)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_manifest(bundle: Path, tar: tarfile.TarFile) -> dict[str, ModelWeights]:
    try:
        info = tar.getmember("manifest.json")
    except KeyError:
        raise InputError(f"{bundle} has no manifest.json", "give a bundle written by `aiportal models pack`") from None
    if not info.isfile() or info.size > MAX_MANIFEST:
        raise InputError(f"{bundle}: its manifest.json is not a plain small file", "make the bundle again")
    try:
        document = json.loads(tar.extractfile(info).read())
    except ValueError:
        raise InputError(f"{bundle}: manifest.json is not JSON", "make the bundle again") from None
    if document.get("format") != FORMAT:
        raise InputError(f"{bundle} is not an aiportal weights bundle", "give a file from `aiportal models pack`")
    return {model_id: from_json(model_id, raw) for model_id, raw in document.get("models", {}).items()}


def _cross_check(bundle: Path, weights: ModelWeights) -> None:
    """Where the project publishes a sha256 for a file, the bundle must carry that very file."""
    try:
        ours = manifest_for(weights.model_id)
    except Exception:  # a model this installation has no manifest of: the bundle's manifest is all there is
        return
    published = {a.name: a.sha256 for a in ours.artifacts if a.sha256}
    for artifact in weights.artifacts:
        if artifact.name in published and published[artifact.name] != artifact.sha256:
            raise InputError(f"{bundle}: {weights.model_id}/{artifact.name} is not the file the publisher released "
                             f"(sha256 {str(artifact.sha256)[:16]}… vs {published[artifact.name][:16]}…)",
                             "make the bundle again on a connected machine with `aiportal models pack`")


def import_bundle(bundle: Path, *, models: list[str] | None = None, progress: ProgressCallback = no_progress,
                  force: bool = False, totalseg_home: str | Path | None = None) -> list[InstallResult]:
    """Check and install the models of ``bundle`` (all, or those named)."""
    bundle = Path(bundle)
    if not bundle.is_file() or not tarfile.is_tarfile(bundle):
        raise InputError(f"{bundle} is not a bundle file", "give the .tar written by `aiportal models pack`")
    results = []
    with tarfile.open(bundle) as tar:
        checked = {m.name: m for m in archive.members(bundle, tar, max_total=1 << 40)}  # hostile members first
        manifest = read_manifest(bundle, tar)
        wanted = models or list(manifest)
        unknown = [m for m in wanted if m not in manifest]
        if unknown:
            raise InputError(f"{bundle} does not hold {', '.join(unknown)}", f"it holds: {', '.join(manifest)}")
        listed = {"manifest.json"} | {f"files/{m}/{a.name}" for m in manifest for a in manifest[m].artifacts}
        extra = sorted(name for name, member in checked.items() if not member.is_dir and name not in listed)
        if extra:
            raise InputError(f"{bundle} holds files its manifest does not list ({extra[0]})",
                             "make the bundle again with `aiportal models pack`")
        for number, model_id in enumerate(wanted):
            weights = manifest[model_id]
            if any(not a.sha256 or a.size is None for a in weights.artifacts):
                raise InputError(f"{bundle}: {model_id} has a file without sha256 or size in the manifest",
                                 "make the bundle again with `aiportal models pack`")
            _cross_check(bundle, weights)
            with tempfile.TemporaryDirectory(dir=_work_dir(), prefix=".import-") as work_name:
                work = Path(work_name)
                local: dict[str, Path] = {}
                for artifact in weights.artifacts:
                    member = checked.get(f"files/{model_id}/{artifact.name}")
                    if member is None:
                        raise InputError(f"{bundle} lacks files/{model_id}/{artifact.name}",
                                         "the bundle is incomplete: copy it again")
                    if member.size != artifact.size:
                        raise InputError(f"{bundle}: {artifact.name} has {member.size} bytes, its manifest "
                                         f"{artifact.size}", "the bundle is damaged: copy it again")
                    progress(number / len(wanted), f"reading {artifact.name} from {bundle.name}")
                    archive.copy_member(bundle, member, work / artifact.name)
                    local[artifact.name] = work / artifact.name

                def step(fraction: float, stage: str, number: int = number) -> None:
                    progress((number + fraction) / len(wanted), stage)

                results.append(install(weights, progress=step, force=force, local_files=local,
                                       origin=f"bundle {bundle.name}", totalseg_home=totalseg_home))
    progress(1.0, f"{len(results)} models from {bundle.name}")
    return results
