"""Bring the post-operative images into the planning frame before plan-vs-outcome distances.

The post-operative CT (moving) is registered rigidly to the planning CT (fixed) with the project's
registration (:func:`aiportal.register.registration.register_volumes`); its moving RAS → fixed RAS
matrix then maps the post-operative surface points and trajectories. ``auto`` registers unless both
images are DICOM series of one frame of reference (same scanner coordinates, nothing to find).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aiportal.errors import InputError

MODES = ("auto", "yes", "no")


@dataclass
class OutcomeFrame:
    """How the post-operative frame maps onto the planning one (identity when not registered)."""

    actual_to_planned_ras: np.ndarray = field(default_factory=lambda: np.eye(4))
    registered: bool = False
    reason: str = ""
    registration: dict | None = None  # the registration's summary (checks, warnings)
    warnings: list[str] = field(default_factory=list)

    def map_points(self, ras: np.ndarray) -> np.ndarray:
        points = np.asarray(ras, float).reshape(-1, 3)
        return points @ self.actual_to_planned_ras[:3, :3].T + self.actual_to_planned_ras[:3, 3]

    def as_dict(self) -> dict:
        return {"registered": self.registered, "reason": self.reason,
                "actual_to_planned_ras": np.round(self.actual_to_planned_ras, 6).tolist(),
                "registration": self.registration, "warnings": self.warnings}


def outcome_frame(planned_image: Path | None, actual_image: Path | None, mode: str = "auto",
                  runtime=None) -> OutcomeFrame:
    """Register ``actual_image`` to ``planned_image`` (rigid) as ``mode`` says; see the module docstring."""
    if mode not in MODES:
        raise InputError(f"--register {mode!r} is unknown", "use auto, yes or no")
    if (planned_image is None) != (actual_image is None):
        raise InputError("registration needs both images", "pass --planned-image and --actual-image (the CTs)")
    if planned_image is None:
        if mode == "yes":
            raise InputError("--register yes needs the images", "pass --planned-image and --actual-image (the CTs)")
        return OutcomeFrame(reason="no images given: compared in the scanner coordinates",
                            warnings=["not registered: the post-operative segmentation is assumed to be in the "
                                      "planning frame (pass --planned-image and --actual-image to register)"])
    if mode == "no":
        return OutcomeFrame(reason="registration turned off (--register no)")
    from aiportal.io.volumes import load_volume
    from aiportal.runtime import get_runtime

    runtime = runtime or get_runtime()
    planned, actual = load_volume(planned_image, runtime), load_volume(actual_image, runtime)
    try:
        return frame_for_volumes(planned.node, actual.node, mode, planned.source, actual.source)
    finally:
        runtime.scene.RemoveNode(planned.node)
        runtime.scene.RemoveNode(actual.node)


def frame_for_volumes(planned_node, actual_node, mode: str = "auto", planned_source=None,
                      actual_source=None) -> OutcomeFrame:
    """Register the post-operative volume node to the planning one (rigid) as ``mode`` says; the DICOM
    sources (if any) tell ``auto`` whether both share one frame of reference."""
    from aiportal.register.registration import register_volumes

    if mode not in MODES:
        raise InputError(f"registration mode {mode!r} is unknown", "use auto, yes or no")
    if mode == "no":
        return OutcomeFrame(reason="registration turned off",
                            warnings=["not registered: the post-operative segmentation is assumed to be in the "
                                      "planning frame"])
    same_frame = (planned_source is not None and actual_source is not None
                  and planned_source.frame_of_reference_uid
                  and planned_source.frame_of_reference_uid == actual_source.frame_of_reference_uid)
    if mode == "auto" and same_frame:
        return OutcomeFrame(reason="both series share one frame of reference")
    result = register_volumes(planned_node, actual_node, kind="rigid")
    return OutcomeFrame(np.asarray(result.matrix_ras, float), True, "rigid registration of the post-operative "
                        "image to the planning image", result.summary(), list(result.warnings))
