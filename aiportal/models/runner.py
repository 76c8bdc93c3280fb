"""Runs a model backend in a child process: real progress, cancel that kills, time-out, memory check.

The same runner serves the desktop (a QTimer polls :class:`SegmentationJob`, whose worker thread
waits here), batch runs and the server. The child is ``python -m aiportal.models.worker`` started
with the model environment's interpreter (see :mod:`aiportal.models.envs`), in a session of its own
so cancel and time-out kill the whole process tree (data-loader workers included). Progress comes
from the backend's own ``progress(fraction, stage)`` calls and from the tqdm bars the libraries
print (nnU-Net's sliding window, TotalSegmentator's stages), parsed from the child's stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiportal import errors
from aiportal.errors import IN_SLICER_ENV, CancelledError, ModelError, in_slicer_session
from aiportal.models.backend import LabelMapResult, ModelInput
from aiportal.models.catalog import BackendRef
from aiportal.models.lifeline import PARENT_PID_ENV
from aiportal.models.worker import INPUT_ARRAY, JOB_FILE, RESULT_ARRAYS, RESULT_FILE
from aiportal.progress import CancelToken, ProgressCallback, no_progress

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the aiportal package
KILL_GRACE_S = 0.5  # SIGTERM first so libraries can remove their temp files, then SIGKILL
LOG_TAIL_LINES = 25
# tqdm: "desc:  45%|####5     | 9/20 [00:01<00:01, 8.12it/s]"; the description is optional
_TQDM = re.compile(r"(?:(?P<desc>[^\r\n|:]{1,60}):\s*)?(?P<pct>\d{1,3})%\|")


@dataclass
class ChildRun:
    """What one child run reported besides its result."""

    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def available_memory_bytes() -> int | None:
    """Memory a new process can use without swapping (Linux MemAvailable, or psutil), None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(needed_bytes: int, what: str) -> None:
    """Refuse before starting a run that cannot fit in the memory available now."""
    available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise ModelError(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB is free",
            "close other programs, crop or downsample the volume, choose a lighter model, or run it on the server",
        )


def kill_process_tree(process: subprocess.Popen) -> None:
    """Stop the child and everything it started; returns when they are gone (or unkillable)."""
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(process.pid).children(recursive=True)
    except Exception:  # psutil missing or the child already gone: the process group still covers it
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None and not any(p.is_running() for p in descendants):
            break
        try:
            if os.name == "posix":
                os.killpg(process.pid, sig)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        for child in descendants:  # children that left the process group (setsid) too
            with contextlib.suppress(Exception):
                child.send_signal(sig)
        try:
            process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.wait()


class _ProgressMapper:
    """Turns backend progress events and tqdm percentages into one monotonic 0..1 progress."""

    def __init__(self) -> None:
        self.base, self.stage, self.shown = 0.0, "starting", 0.0

    def backend(self, fraction: float, stage: str) -> tuple[float, str]:
        self.base, self.stage = max(self.base, fraction), stage
        return self._show(self.base), stage

    def tqdm(self, percent: int, desc: str | None) -> tuple[float, str]:
        # a bar fills most of what is left before the backend's next report
        fraction = self.base + 0.9 * (1.0 - self.base) * min(percent, 100) / 100.0
        detail = f"{desc.strip()} {percent}%" if desc and desc.strip() else f"{percent}%"
        return self._show(fraction), f"{self.stage} ({detail})"

    def _show(self, fraction: float) -> float:
        self.shown = max(self.shown, min(fraction, 0.999))
        return self.shown


class ChildRunner:
    """Run backends in a child Python (``python``: the model environment's interpreter)."""

    def __init__(self, python: str | None = None, timeout_s: float | None = None,
                 memory_factor: float = 12.0, poll_s: float = 0.05) -> None:
        self.python = python or sys.executable
        self.timeout_s = timeout_s
        self.memory_factor = memory_factor  # working memory per input byte (float copies, probabilities)
        self.poll_s = poll_s

    def run(self, backend: BackendRef, volume: ModelInput, params: dict[str, Any],
            progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, *,
            model_id: str = "model", device: str = "auto", devices: tuple[str, ...] = ("cpu",),
            memory_bytes: int = 0, report: ChildRun | None = None) -> LabelMapResult:
        cancel = cancel or CancelToken()
        report = report if report is not None else ChildRun()
        what = f"{model_id} on {volume.name}"
        check_memory(max(memory_bytes, int(volume.array.nbytes * self.memory_factor)), what)
        folder = Path(tempfile.mkdtemp(prefix="aiportal-run-"))
        ok = False
        try:
            np.save(folder / INPUT_ARRAY, np.ascontiguousarray(volume.array))
            (folder / JOB_FILE).write_text(json.dumps({
                "backend": backend.ref, "backend_args": list(backend.args), "model_id": model_id,
                "params": params, "device": device, "devices": list(devices),
                "ijk_to_ras": np.asarray(volume.ijk_to_ras).tolist(), "modality": volume.modality,
                "name": volume.name,
            }, default=str))
            result = self._run_child(folder, progress, cancel, what, report)
            ok = True
            return result
        except (CancelledError, KeyboardInterrupt):  # stopped on request: nobody needs the child's log
            ok = True
            raise
        finally:
            if ok or not (folder / "child.log").exists():
                shutil.rmtree(folder, ignore_errors=True)
            else:  # keep the log for the error message; the arrays are not worth keeping
                for name in (INPUT_ARRAY, RESULT_ARRAYS):
                    (folder / name).unlink(missing_ok=True)

    def _run_child(self, folder: Path, progress: ProgressCallback, cancel: CancelToken, what: str,
                   report: ChildRun) -> LabelMapResult:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_PID_ENV: str(os.getpid())})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        if in_slicer_session():  # the child's messages then name the command that works there
            env[IN_SLICER_ENV] = "1"
        command = [self.python, "-m", "aiportal.models.worker", str(folder)]
        t0 = time.monotonic()
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                       start_new_session=(os.name == "posix"))
        except OSError as error:
            raise ModelError(f"Cannot start {self.python} for {what}: {error}",
                             "check the model environment (`aiportal models`)") from None
        events: queue.Queue = queue.Queue()
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        log_path = folder / "child.log"
        readers = [
            threading.Thread(target=_read_events, args=(process.stdout, events), daemon=True),
            threading.Thread(target=_read_stderr, args=(process.stderr, events, tail, log_path), daemon=True),
        ]
        for reader in readers:
            reader.start()
        mapper, error_event, done = _ProgressMapper(), None, False
        try:
            while True:
                finished = process.poll() is not None and not any(reader.is_alive() for reader in readers)
                while True:
                    try:
                        kind, payload = events.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "tqdm":
                        progress(*mapper.tqdm(*payload))
                    elif "progress" in payload:
                        progress(*mapper.backend(payload["progress"], payload.get("stage", "")))
                    elif "note" in payload:
                        report.notes.append(payload["note"])
                    elif "device" in payload:
                        report.device = payload["device"]
                    elif "error" in payload:
                        error_event = payload["error"]
                    elif payload.get("done"):
                        done = True
                if finished:
                    break
                if cancel.cancelled:
                    kill_process_tree(process)
                    raise CancelledError(what)
                if self.timeout_s is not None and time.monotonic() - t0 > self.timeout_s:
                    kill_process_tree(process)
                    raise ModelError(f"{what} did not finish within {self.timeout_s:g} s and was stopped",
                                     "raise the time-out, use a GPU, or crop the volume")
                time.sleep(self.poll_s)
        except BaseException:
            if process.poll() is None:
                kill_process_tree(process)
            raise
        report.elapsed_s = time.monotonic() - t0
        report.log_tail = list(tail)
        if error_event is not None:
            error_class = getattr(errors, error_event.get("type", ""), None)
            if not (isinstance(error_class, type) and issubclass(error_class, errors.AIPortalError)):
                error_class = ModelError
            raise error_class(error_event["message"], error_event.get("fix"))
        if process.returncode != 0 or not done:
            how = (f"was killed by signal {-process.returncode}" if process.returncode < 0
                   else f"stopped with exit code {process.returncode}")
            last = "\n".join(f"    {line}" for line in tail) or "    (it printed nothing)"
            raise ModelError(f"{what} {how}; the last lines it printed:\n{last}\n",
                             f"full log: {log_path}; if memory ran out, crop the volume or use a smaller model")
        return _read_result(folder)


def _read_events(stream, events: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        # a line that is not JSON is not ours: a library that wrote to the real fd 1 before the redirect
        with contextlib.suppress(ValueError):
            events.put(("event", json.loads(raw)))
    stream.close()


def _read_stderr(stream, events: queue.Queue, tail: deque, log_path: Path) -> None:
    """Log everything; tqdm redraws with carriage returns, so split on those as well as newlines."""
    pending = ""
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
            text = chunk.decode("utf-8", errors="replace")
            log.write(text)
            log.flush()
            pending += text
            *pieces, pending = re.split(r"[\r\n]", pending)
            for piece in pieces:
                _take_line(piece, events, tail)
        if pending:
            _take_line(pending, events, tail)
    stream.close()


def _take_line(line: str, events: queue.Queue, tail: deque) -> None:
    line = line.strip()
    if not line:
        return
    match = _TQDM.search(line)
    if match:
        events.put(("tqdm", (int(match["pct"]), match["desc"])))
        return  # bars are progress, not log tail
    tail.append(line)


def _read_result(folder: Path) -> LabelMapResult:
    meta = json.loads((folder / RESULT_FILE).read_text())
    with np.load(folder / RESULT_ARRAYS) as arrays:
        layers = [arrays[f"arr_{index}"] for index in range(meta["layers"])]
    return LabelMapResult(layers=layers, confidences={int(k): v for k, v in meta["confidences"].items()},
                          details=meta.get("details", {}), warnings=list(meta.get("warnings", [])))
