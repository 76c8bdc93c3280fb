"""MONAI bundles fetched the way MONAI fetches them: ``monai.bundle.download``.

A manifest artifact with layout ``monai-bundle`` names the bundle (``name``) and either a ``url``
(``monai.bundle.download(url=...)`` fetches that zip) or a ``source`` (``github``, ``monaihosting``,
``huggingface_hub``, ``ngc``: MONAI's own model-zoo hosts, with the model's ``version``). What MONAI
downloaded becomes one zip: the downloaded zip itself for a URL, or the fetched bundle folder zipped
with fixed names, order and dates (so the same bundle always gives the same sha256) for a source.
From there it is checked (size, sha256, or a trust-on-first-use pin), unpacked and installed like a
``monai-bundle-zip``, and it packs into air-gapped bundles the same way.

MONAI's downloader honours ``HTTPS_PROXY``; it does not resume a broken transfer (run again).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from aiportal.digests import file_sha256
from aiportal.errors import ModelError
from aiportal.progress import ProgressCallback
from aiportal.weights.manifest import Artifact

FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def _zip_folder(folder: Path, target: Path) -> None:
    """A zip of ``folder`` (as its top folder) whose bytes depend only on the files' names and contents."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", FIXED_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, path.read_bytes())


def monai_download(artifact: Artifact, version: str, folder: Path, progress: ProgressCallback) -> tuple[Path, str]:
    """Fetch the bundle with ``monai.bundle.download`` into ``folder``; returns its zip and the zip's sha256."""
    from monai.bundle import download

    name = Path(artifact.name).stem  # the manifest may name it "x" or "x.zip"
    target = folder / f"{name}.zip"
    work = folder / f".monai-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    where = artifact.url or f"MONAI's {artifact.source or 'github'} source"
    progress(0.0, f"monai.bundle.download {name} from {where}")
    try:
        if artifact.url:
            download(name=name, bundle_dir=str(work), url=artifact.url, progress=False)
            shutil.move(str(work / f"{name}.zip"), target)  # the zip MONAI fetched is the checked file
        else:
            download(name=name, version=version or None, bundle_dir=str(work), source=artifact.source or "github",
                     progress=False)
            fetched = work / name
            if not (fetched / "configs" / "metadata.json").is_file():
                raise ModelError(f"monai.bundle.download gave no bundle {name} (configs/metadata.json missing)",
                                 "check the bundle name and version in the manifest")
            _zip_folder(fetched, target)
    except ModelError:
        raise
    except Exception as error:  # MONAI's downloader raises many kinds (URLError, HTTPError, ValueError, ...)
        downloaded = work / f"{name}.zip"
        if artifact.url and downloaded.is_file():  # fetched, but MONAI could not unpack it: our checks say why
            shutil.move(str(downloaded), target)
            return target, file_sha256(target)
        target.unlink(missing_ok=True)
        raise ModelError(f"monai.bundle.download of {name} from {where} failed: {type(error).__name__}: {error}",
                         "check the network (HTTPS_PROXY) and the bundle's name, version and source in the "
                         "manifest, then run again") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(1.0, f"{name}: {target.stat().st_size / 1e6:.1f} MB from monai.bundle.download")
    return target, file_sha256(target)
