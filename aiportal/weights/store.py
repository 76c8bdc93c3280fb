"""Where installed weights and their receipts live, the install lock and the free-disk check.

``AIPORTAL_WEIGHTS_DIR`` (default ``~/.cache/aiportal/weights``) holds ``MODEL_ID/`` folders,
``receipts/MODEL_ID.json`` (what was installed, from where, and the sha256 of every file) and
``downloads/`` (partial downloads, kept so the next try resumes). TotalSegmentator's datasets go to
its own weights folder, where it looks for them; their receipts are kept here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from aiportal.errors import ModelError

WEIGHTS_DIR_ENV = "AIPORTAL_WEIGHTS_DIR"


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or Path.home() / ".cache" / "aiportal" / "weights").expanduser()


def receipts_dir() -> Path:
    return weights_dir() / "receipts"


def receipt_path(model_id: str) -> Path:
    return receipts_dir() / f"{model_id.replace('/', '_').replace(':', '_')}.json"


def read_receipt(model_id: str) -> dict | None:
    path = receipt_path(model_id)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def all_receipts() -> list[dict]:
    folder = receipts_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            found.append({"model_id": path.stem, "damaged": str(path)})
    return found


def write_receipt(receipt: dict) -> Path:
    path = receipt_path(receipt["model_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(receipt, indent=2))
    temporary.replace(path)  # a reader never sees half a receipt
    return path


def check_free_disk(folder: Path, needed: int, what: str) -> None:
    """Refuse before downloading when ``folder``'s disk cannot hold ``needed`` bytes."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise ModelError(f"{what} needs {needed / 1e9:.1f} GB free on the disk of {folder}, which has "
                         f"{free / 1e9:.1f} GB", f"free space there, or set {WEIGHTS_DIR_ENV} (and "
                         "TOTALSEG_HOME_DIR for TotalSegmentator) to a bigger disk")


@contextlib.contextmanager
def install_lock(timeout: float = 600.0, on_wait=None) -> Iterator[None]:
    """One install at a time per weights folder (other processes and Celery workers wait their turn)."""
    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".install.lock"
    handle = open(path, "a+")  # noqa: SIM115 (held for the whole install, closed in finally)
    deadline = time.monotonic() + timeout
    try:
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ModelError(f"another install holds {path} ({holder})",
                                 "wait for it to finish (or end that process), then run the command again")
            if on_wait:
                on_wait()
                on_wait = None
            time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _try_lock(handle) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
