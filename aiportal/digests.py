"""SHA-256 of files, read in 1 MiB blocks (weights, checkpoints, bundles: files of gigabytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def file_digest(path: Path) -> hashlib._Hash:
    """The running SHA-256 of ``path``'s bytes (a download resumed after them goes on updating it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while block := reader.read(BLOCK):
            digest.update(block)
    return digest


def file_sha256(path: Path) -> str:
    return file_digest(path).hexdigest()
