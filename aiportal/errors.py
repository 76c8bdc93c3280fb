"""One error type for everything a user can get wrong: it names the input and the fix."""

from __future__ import annotations

import os
import sys

#: Set for the child processes of a Slicer session, whose own messages then name the command that works there.
IN_SLICER_ENV = "AIPORTAL_IN_SLICER"


def in_slicer_session() -> bool:
    """Inside the 3D Slicer application, or in a model process it started (imports nothing)."""
    slicer = sys.modules.get("slicer")
    return os.environ.get(IN_SLICER_ENV) == "1" or (hasattr(slicer, "app") and hasattr(slicer, "mrmlScene"))


def cli_command(arguments: str) -> str:
    """How a user runs ``aiportal ARGUMENTS`` from where this runs, for fix texts.

    Inside 3D Slicer there is no ``aiportal`` console script, but Slicer's own Python runs the same
    CLI: ``PythonSlicer -m aiportal.cli``.
    """
    return f"{'PythonSlicer -m aiportal.cli' if in_slicer_session() else 'aiportal'} {arguments}"


class AIPortalError(Exception):
    """An error a user can act on.

    ``str(error)`` is one line: what went wrong with which input, then how to fix it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(f"{message} — {fix}" if fix else message)


class InputError(AIPortalError):
    """The input image, folder or file cannot be used."""


class ModelError(AIPortalError):
    """A model cannot run on this input or this machine."""


class CancelledError(AIPortalError):
    """The user cancelled a running job."""

    def __init__(self, what: str = "the job"):
        super().__init__(f"Cancelled {what}")
