"""Child processes for the tests' real services (Orthanc, API server, Redis, Celery, browser workspace)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` (its own group, children included)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def log_tail(path: Path, lines: int) -> str:
    """The last lines of a service's log, for error messages ("" before it exists)."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a killed child not yet reaped by its parent is a zombie: gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def gone_within(pids, seconds: float) -> bool:
    """Wait up to ``seconds`` for every process of ``pids`` to end; True when they all did."""
    import time

    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(map(alive, pids))


def wait_for_pids(pid_file: Path, timeout: float = 60.0) -> list[int]:
    """The pids a test backend wrote into ``pid_file`` (runner_backends.SleepyBackend), once it has."""
    import time

    deadline = time.monotonic() + timeout
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [int(pid) for pid in pid_file.read_text().split()]
