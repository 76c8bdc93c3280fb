"""The model child dies with the process that started it.

The child runs in its own session (so that a cancel can stop its whole process group), which
also means nothing stops it when its parent is killed outright: a Celery pool child lost to
SIGKILL or the OOM killer, a CLI killed with ``kill -9``. A daemon thread in the child watches its
parent; when the parent is gone (the child was re-parented), it kills the child's process group —
the child and anything it started, such as nnU-Net's preprocessing workers, within ``POLL_S`` —
after removing the run's folder (it holds a copy of the image).
(Not ``PR_SET_PDEATHSIG``: it fires when the spawning *thread* ends, and it would kill the child
alone, leaving its helpers behind.)
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

PARENT_PID_ENV = "AIPORTAL_MODEL_PARENT_PID"
POLL_S = 0.2


def _kill_own_group(folder: Path | None = None) -> None:
    if folder is not None:  # the run's folder holds a copy of the image; nobody else is left to remove it
        shutil.rmtree(folder, ignore_errors=True)
    if os.getpgrp() == os.getpid():  # our own session: take the model's helpers along
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int, folder: Path | None) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(POLL_S)
    _kill_own_group(folder)


def die_with_parent(parent: int | None = None, folder: Path | None = None) -> None:
    """Start the watch (``parent``: the pid the runner gave, default the current parent; ``folder``:
    the run's folder, removed when the parent is gone)."""
    if os.name != "posix":
        return
    parent = parent or os.getppid()
    if os.getppid() != parent:  # the parent died before the watch began
        _kill_own_group(folder)
    threading.Thread(target=_watch, args=(parent, folder), name="aiportal-lifeline", daemon=True).start()
