"""How the command line stops: SIGTERM like Ctrl-C (child processes stopped, temporary files removed),
and a file-system error as the usual one line naming the path and the fix."""

from __future__ import annotations

import signal
import threading


def sigterm_as_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so that cleanup (``finally``) runs."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(_signum, _frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def os_error_line(error: OSError) -> str:
    """``error`` as what/fix text that names the path (and a second path, for a rename or copy)."""
    paths = " → ".join(str(name) for name in (error.filename, error.filename2) if name)
    what = f"cannot write or read {paths}: {error.strerror or type(error).__name__}" if paths else str(error)
    return (f"{what} (fix: choose an output folder (--out) you can write to, whose parents are folders, "
            "and an input that exists)")
