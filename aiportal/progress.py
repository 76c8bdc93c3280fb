"""The progress and cancel contract shared by every long-running step.

A step reports ``progress(fraction, stage)`` with ``fraction`` in [0, 1] and a short stage text,
and calls ``cancel.check()`` between stages; the same pair serves the CLI's progress bar, the
desktop progress bar, the browser and the inference server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from aiportal.errors import CancelledError

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, stage: str) -> None:
    """A progress callback that ignores everything."""


class CancelToken:
    """Set from any thread; checked by the running step at safe points."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, what: str = "the job") -> None:
        """Raise :class:`CancelledError` when cancel was requested."""
        if self._event.is_set():
            raise CancelledError(what)


def scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """Map a sub-step's 0..1 progress onto [start, end] of its parent's progress."""

    def report(fraction: float, stage: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), stage)

    return report
