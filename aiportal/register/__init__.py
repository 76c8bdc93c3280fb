"""AIRegister logic: register volumes with SimpleITK and keep the result as Slicer transform nodes."""

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
    "RegistrationResult",
    "apply_to_scene",
    "resample",
    "load_transform",
    "register_volumes",
    "save_transform",
    "transform_matrix",
]
