"""One shape for every long job a face runs: start / poll / cancel / wait, then finish on the caller's thread.

A subclass computes in :meth:`BackgroundJob._compute` (a worker thread: no scene changes there) and
turns the computed value into scene objects in its own ``finish``; a GUI polls from a timer, a batch
caller uses :meth:`BackgroundJob.run`. Segmentation (local or on the server) and registration use it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiportal.errors import CancelledError
from aiportal.progress import CancelToken, ProgressCallback, no_progress

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    fraction: float
    stage: str
    error: str | None = None


class BackgroundJob:
    """Runs :meth:`_compute` in a worker thread; errors are kept and re-raised by :meth:`_computed`."""

    def __init__(self) -> None:
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._status = JobStatus("queued", 0.0, "queued")
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- for subclasses ------------------------------------------------------------------------
    def _compute(self) -> Any:
        """The work, in the worker thread; report with :meth:`_report`, check ``self._cancel``."""
        raise NotImplementedError

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._status = JobStatus("running", min(max(fraction, 0.0), 1.0), stage)

    def _computed(self) -> Any:
        """The computed value once the job ended; re-raises its error (or CancelledError)."""
        status = self.wait()
        if status.state != "done":
            assert self._error is not None
            raise self._error
        return self._value

    def _work(self) -> None:
        try:
            value = self._compute()
            with self._lock:
                self._value, self._status = value, JobStatus("done", 1.0, "done")
        except CancelledError as error:
            with self._lock:
                self._error = error
                self._status = JobStatus("cancelled", self._status.fraction, "cancelled", str(error))
        except BaseException as error:  # reported to the caller by finish(), never lost in the thread
            with self._lock:
                self._error = error
                self._status = JobStatus("failed", self._status.fraction, "failed", str(error))

    # -- for callers ---------------------------------------------------------------------------
    def start(self, stage: str = "starting") -> None:
        """Start the worker thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("job already started")
        self._status = JobStatus("running", 0.0, stage)
        self._thread = threading.Thread(target=self._work, name=f"aiportal-{type(self).__name__}", daemon=True)
        self._thread.start()

    def poll(self) -> JobStatus:
        with self._lock:
            return self._status

    def cancel(self) -> None:
        """Ask the job to stop at its next safe point; poll() then reports "cancelled"."""
        self._cancel.cancel()

    def wait(self, timeout: float | None = None) -> JobStatus:
        # on the job's status, not join() alone: a join cut short by Ctrl-C can later return at once
        # although the thread still runs (CPython 3.11), and the model's processes would outlive the CLI
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread is not None and self.poll().state == "running":
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                break
            self._thread.join(left)
            if not self._thread.is_alive():
                time.sleep(0.01)
        return self.poll()

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        """The result, made on the caller's thread (subclasses add the scene objects)."""
        return self._computed()

    def run(self, progress: ProgressCallback = no_progress, poll_interval: float = 0.05, **finish_options: Any) -> Any:
        """Run to completion, reporting progress on the calling thread; Ctrl-C cancels."""
        self.start()
        last = None
        try:
            while (status := self.wait(poll_interval)).state == "running":
                if (status.fraction, status.stage) != last:
                    last = (status.fraction, status.stage)
                    progress(status.fraction, status.stage)
        except KeyboardInterrupt:
            self.cancel()
            self.wait()
            raise CancelledError(type(self).__name__) from None
        if status.state == "done":
            progress(1.0, "done")
        return self.finish(**finish_options)


class FunctionJob(BackgroundJob):
    """A function of plain inputs (files, arrays, a server address: never scene nodes) in a worker thread.

    ``function(progress, cancel)`` reports with ``progress(fraction, stage)`` and may check ``cancel``;
    its return value is what :meth:`finish` returns. For short desktop tasks that must not block the
    main thread (a server check, writing reports from computed measurements).
    """

    def __init__(self, function, stage: str = "working", keep: Any = None) -> None:
        super().__init__()
        self._function, self._stage = function, stage
        self.keep = keep  # what the function reads (e.g. a private scene of copies), alive as long as the job

    def _compute(self) -> Any:
        return self._function(self._report, self._cancel)

    def start(self, stage: str | None = None) -> None:
        super().start(stage or self._stage)
