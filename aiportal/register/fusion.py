"""Fusion review of a registration in the slice views: fade, difference or checkerboard.

Works on the scene's slice composite nodes (one per slice view), so the desktop module, the
browser workspace and any other face show the same thing. The moving volume should be under
the registration's transform node (see :func:`aiportal.register.apply_to_scene`) for fade and
difference; the checkerboard is a new volume on the fixed grid that interleaves the fixed
volume and the resampled moving one in cubes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import slicer

from aiportal.errors import InputError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, volume_node_from_array
from aiportal.register.registration import RegistrationResult, resample
from aiportal.runtime import SlicerRuntime

FusionMode = Literal["fade", "difference", "checkerboard"]


def checkerboard(fixed: np.ndarray, moving: np.ndarray, spacing_kji: np.ndarray, square_mm: float) -> np.ndarray:
    """Cubes of ``square_mm`` taken alternately from ``fixed`` and ``moving`` (same shape)."""
    cells = [np.arange(n) * s // square_mm for n, s in zip(fixed.shape, spacing_kji, strict=True)]
    parity = (cells[0][:, None, None] + cells[1][None, :, None] + cells[2][None, None, :]) % 2
    return np.where(parity == 0, fixed, moving.astype(fixed.dtype))


def show_fusion(runtime: SlicerRuntime, result: RegistrationResult, fixed_node, moving_node, *,
                mode: FusionMode = "fade", opacity: float = 0.5, square_mm: float = 20.0):
    """Set every slice view to review the registration; returns the checkerboard volume in that mode."""
    if mode not in ("fade", "difference", "checkerboard"):
        raise InputError(f"Unknown fusion mode {mode!r}", "use fade, difference or checkerboard")
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"Fusion opacity {opacity} is outside 0..1", "give an opacity from 0 to 1")
    composites = runtime.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    board = None
    background, foreground = fixed_node, moving_node
    if mode == "checkerboard":
        moved = resample(runtime, result, fixed_node, moving_node, name=f"{moving_node.GetName()} on fixed grid")
        spacing = np.linalg.norm(ijk_to_ras_matrix(fixed_node)[:3, :3], axis=0)[::-1]
        board = volume_node_from_array(
            runtime.scene, checkerboard(array_from_volume(fixed_node), array_from_volume(moved), spacing, square_mm),
            ijk_to_ras_matrix(fixed_node), f"{fixed_node.GetName()} / {moving_node.GetName()} checkerboard")
        runtime.scene.RemoveNode(moved)
        background, foreground = board, None
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(1.0 if mode == "difference" else opacity)
        composite.SetCompositing(slicer.vtkMRMLSliceCompositeNode.Subtract if mode == "difference"
                                 else slicer.vtkMRMLSliceCompositeNode.Alpha)
    return board
