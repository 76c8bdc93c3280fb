"""Bounds on what a client can make the server do: unpacked archive size, and what error text may show.

A zipped DICOM series is unpacked into the job folder; a "zip bomb" (a few MB of deflated zeros)
would fill the disk. The declared sizes are checked before anything is written, and the bytes are
counted again while they are written (a forged header cannot lie past the cap).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from aiportal.errors import AIPortalError

MAX_FILES = 5000
UNPACKED_PER_UPLOAD = 8  # a DICOM series rarely deflates better than ~3:1; 8x the upload cap is generous
MAX_RATIO = 200  # per member; deflated zeros reach ~1000:1
CHUNK = 1 << 20


class UploadRefused(AIPortalError):
    """A 4xx refusal of an upload; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, fix: str) -> None:
        super().__init__(message, fix)
        self.status = status


def unpacked_cap(max_upload_bytes: int) -> int:
    return max(UNPACKED_PER_UPLOAD * max_upload_bytes, 64 << 20)


def safe_extract(archive: Path, folder: Path, max_unpacked: int, max_files: int = MAX_FILES) -> None:
    """Unpack ``archive`` into ``folder`` under our own file names, or refuse (413/400) leaving no folder."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            if len(members) > max_files:
                raise UploadRefused(400, f"the .zip holds more than {max_files} files", "upload one series per job")
            declared = sum(info.file_size for info in members)
            if declared > max_unpacked:
                raise _too_big(max_unpacked)
            for info in members:
                if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > CHUNK:
                    raise UploadRefused(413, f"the .zip compresses one file more than {MAX_RATIO}:1 "
                                             "(a zip bomb, not a DICOM series)", "zip the DICOM series folder again")
            folder.mkdir(parents=True)
            written = 0
            for index, info in enumerate(members):  # our own names: never a path from the archive
                with bundle.open(info) as source, open(folder / f"{index:05d}.dcm", "wb") as target:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        if written > max_unpacked:  # the header lied about the sizes
                            raise _too_big(max_unpacked)
                        target.write(chunk)
    except zipfile.BadZipFile as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadRefused(400, "the upload is not a valid .zip archive",
                            "zip the DICOM series folder again") from error
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _too_big(limit: int) -> UploadRefused:
    return UploadRefused(413, f"the .zip unpacks to more than this server's limit of {limit / 2**20:.0f} MiB",
                         "upload one series per job, or ask the administrator to raise --max-upload-mb")


_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+~-]+){2,}/?")


def redact_paths(text: str | None) -> str | None:
    """``text`` with absolute file paths cut to their last part: clients never see the server's folders."""
    if not text:
        return text
    return _PATH.sub(lambda match: "…/" + match.group(0).rstrip("/").rsplit("/", 1)[-1], text)
