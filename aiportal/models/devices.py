"""Compute devices: which ones a user may ask for, and which one a run gets here and now.

Imported by the model worker (a child process in the model's environment), so it loads nothing
heavier than the standard library; torch is imported only when a model could use a GPU.
"""

from __future__ import annotations

import sys

from aiportal.errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "mps")


def check_device(requested: str) -> str:
    if requested not in DEVICES:
        raise ModelError(f"Unknown device {requested!r}", f"use one of: {', '.join(DEVICES)}")
    return requested


def _visible_devices() -> tuple[list[str], bool]:
    """The devices this interpreter can use, and whether torch is installed to look for GPUs."""
    try:
        import torch
    except ImportError:
        return ["cpu"], False
    available = ["cpu"]
    if torch.cuda.is_available():
        available.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        available.append("mps")
    return available, True


def resolve_device(requested: str, supported: list[str] | tuple[str, ...]) -> tuple[str, str | None]:
    """The device to use here and now, with a note when the request had to fall back to the CPU."""
    check_device(requested)
    if set(supported) <= {"cpu"}:  # a CPU-only model: no need to load torch to find out
        if requested in ("auto", "cpu"):
            return "cpu", None
        return "cpu", f"{requested} requested but this model does not support it: running on the CPU (slower)"
    available, has_torch = _visible_devices()
    if requested == "auto":
        return next(device for device in (*supported, "cpu") if device in available), None
    if requested in available and requested in supported:
        return requested, None
    reason = "this model does not support it" if requested not in supported else (
        f"no {requested.upper()} device is visible to {sys.executable}"
        + ("" if has_torch else " (no torch installed)"))
    return "cpu", f"{requested} requested but {reason}: running on the CPU (slower)"
