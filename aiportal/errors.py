"""One error type for everything a user can get wrong: it names the input and the fix."""

from __future__ import annotations


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
