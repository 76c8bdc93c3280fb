"""AIRegister logic: register volumes with SimpleITK and keep the result as Slicer transform nodes."""

from aiportal.register.fusion import checkerboard, show_fusion
from aiportal.register.landmarks import LandmarkPairs, TargetRegistrationError, read_landmark_pairs
from aiportal.register.propagate import propagate_segmentation
from aiportal.register.registration import (
    RegistrationResult,
    apply_to_scene,
    load_transform,
    register_volumes,
    resample,
    save_transform,
    transform_matrix,
)

__all__ = [
    "LandmarkPairs",
    "TargetRegistrationError",
    "read_landmark_pairs",
    "checkerboard",
    "show_fusion",
    "RegistrationResult",
    "apply_to_scene",
    "resample",
    "load_transform",
    "propagate_segmentation",
    "register_volumes",
    "save_transform",
    "transform_matrix",
]
