"""Unpacking archives that came from elsewhere (a download, a USB stick) without trusting them.

Zip and tar members are checked before a byte is written: no absolute paths, no ``..``, no drive
letters, no links or device files, a cap on the member count and on the total unpacked size, and
no member that expands more than :data:`MAX_RATIO` times (a zip bomb). While copying, the bytes
actually written are counted too, because a header can lie about the size.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from aiportal.errors import InputError

MAX_MEMBERS = 100_000
MAX_RATIO = 200  # nnU-Net checkpoints compress ~1.1x, JSON ~10x; 200x is a bomb, not weights
RATIO_FLOOR = 1 << 20  # members below 1 MiB may have any ratio (a JSON of zeros is harmless)
DEFAULT_MAX_TOTAL = 64 << 30  # the largest TotalSegmentator download unpacked is well below this


@dataclass(frozen=True)
class Member:
    name: str  # the safe relative POSIX path
    size: int  # declared unpacked size
    is_dir: bool
    open: Callable[[], BinaryIO]


def _refuse(archive: Path, name: str, why: str) -> InputError:
    return InputError(f"{archive} is refused: member {name!r} {why}",
                      "use the original file from the model's publisher (or a bundle made by `aiportal models pack`)")


def safe_name(archive: Path, name: str) -> str:
    """The member name as a relative path inside the target folder; refuses every way out of it."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or path.is_absolute():
        raise _refuse(archive, name, "has an absolute path")
    if any(part == ".." for part in path.parts):
        raise _refuse(archive, name, "climbs out of the folder ('..')")
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        raise _refuse(archive, name, "has an empty name")
    return "/".join(parts)


def _zip_members(archive: Path, zip_file: zipfile.ZipFile) -> Iterator[Member]:
    for info in zip_file.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no file type (Windows)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(archive, info.filename, "is a link or a special file")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _refuse(archive, info.filename, f"expands {info.file_size // max(info.compress_size, 1)}x "
                                                  "(a zip bomb)")
        yield Member(safe_name(archive, info.filename), info.file_size, info.is_dir(),
                     lambda info=info: zip_file.open(info))


def _tar_members(archive: Path, tar_file: tarfile.TarFile) -> Iterator[Member]:
    for info in tar_file:
        if not (info.isfile() or info.isdir()):
            raise _refuse(archive, info.name, "is a link or a special file")
        yield Member(safe_name(archive, info.name), info.size, info.isdir(),
                     lambda info=info: tar_file.extractfile(info))


def members(archive: Path, opened: zipfile.ZipFile | tarfile.TarFile,
            max_total: int = DEFAULT_MAX_TOTAL) -> list[Member]:
    """Every member, checked; raises InputError on the first hostile one."""
    found = list(_zip_members(archive, opened) if isinstance(opened, zipfile.ZipFile)
                 else _tar_members(archive, opened))
    if len(found) > MAX_MEMBERS:
        raise InputError(f"{archive} is refused: {len(found)} members (more than {MAX_MEMBERS})",
                         "use the original archive")
    total = sum(member.size for member in found)
    if total > max_total:
        raise InputError(f"{archive} is refused: it unpacks to {total / 1e9:.1f} GB, more than its "
                         f"{max_total / 1e9:.1f} GB cap", "use the original archive")
    names = [member.name for member in found if not member.is_dir]
    if len(set(names)) != len(names):
        raise InputError(f"{archive} is refused: a member name appears twice", "use the original archive")
    return found


def open_archive(path: Path) -> zipfile.ZipFile | tarfile.TarFile:
    if zipfile.is_zipfile(path):
        return zipfile.ZipFile(path)
    if tarfile.is_tarfile(path):
        return tarfile.open(path)
    raise InputError(f"{path} is neither a zip nor a tar archive", "give the downloaded archive itself")


def copy_member(archive: Path, member: Member, target: Path) -> str:
    """Write one member and return its sha256, refusing it when it holds more bytes than it declared."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    digest = hashlib.sha256()
    with member.open() as reader, open(target, "wb") as writer:
        while chunk := reader.read(1 << 20):
            written += len(chunk)
            if written > member.size:
                raise _refuse(archive, member.name, "holds more bytes than its header says")
            writer.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def extract(archive: Path, folder: Path, max_total: int = DEFAULT_MAX_TOTAL,
            keep: Callable[[str], str | None] = lambda name: name) -> dict[Path, str]:
    """Unpack every checked member into ``folder``; ``keep`` maps a member name to its path there (None: skip).
    Returns the sha256 of every file written, hashed on the way (no second read)."""
    written: dict[Path, str] = {}
    with open_archive(archive) as opened:
        checked = members(archive, opened, max_total)
        for member in checked:
            relative = keep(member.name)
            if relative is None:
                continue
            target = folder / relative
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            written[target] = copy_member(archive, member, target)
    return written


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
