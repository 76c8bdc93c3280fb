"""Is a NIfTI file complete? ITK's NIfTI reader fills a truncated ``.nii.gz`` (or ``.nii``) with
zeros instead of failing, so a half-copied scan would open as an image with a black end. Every
face loads through :func:`aiportal.io.volumes.load_volume`, which asks here first."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from aiportal.errors import InputError

_BYTES_PER_VOXEL_BITS = 8
_CHUNK = 1 << 22


def read_whole_gzip(path: Path) -> int:
    """Decompress the whole stream; returns its length. Raises EOFError/OSError when it is cut short."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
    return total


def _nifti1_needed_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes of a NIfTI-1 header; None when it is not one (left to the reader)."""
    if len(header) < 348:
        return None
    for order in ("<", ">"):
        if struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            if not 1 <= dims[0] <= 7 or bitpix <= 0:
                return None
            voxels = 1
            for size in dims[1:dims[0] + 1]:
                voxels *= max(int(size), 1)
            return int(offset) + voxels * bitpix // _BYTES_PER_VOXEL_BITS
    return None


def check_nifti_complete(path: Path) -> None:
    """Raise :class:`InputError` when a ``.nii``/``.nii.gz`` ends before its voxels do."""
    name = path.name.lower()
    if not (name.endswith(".nii.gz") or name.endswith(".nii")) or not path.is_file():
        return
    fix = "copy or download the file again; a complete file opens"
    try:
        if name.endswith(".gz"):
            length = read_whole_gzip(path)
            with gzip.open(path, "rb") as stream:
                header = stream.read(348)
        else:
            length = path.stat().st_size
            with open(path, "rb") as stream:
                header = stream.read(348)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"Cannot read image file {path}: it is truncated or damaged ({error})", fix) from error
    needed = _nifti1_needed_bytes(header)
    if needed is not None and length < needed:
        raise InputError(f"Cannot read image file {path}: it is truncated ({length} of {needed} bytes)", fix)
