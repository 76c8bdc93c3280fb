"""Minimum distance and closest point pair between segments, with per-structure alert thresholds.

The distance map of the second segment (scipy's exact Euclidean distance transform with the voxel
spacing, cropped to the box around both segments) is read at the first segment's surface voxels:
the minimum is the exact smallest distance between voxel centres of the two segments, in mm, on
anisotropic and rotated grids alike. ``gap_mm`` estimates the distance between the segments'
true surfaces (a quarter voxel of each side removed along the closest pair's direction; 0 when touching).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from aiportal.planning.grid import LabelGrid, bounding_box


@dataclass
class Proximity:
    """Closest approach of ``structure`` to ``target``."""

    target: str
    structure: str
    centre_distance_mm: float  # between the nearest voxel centres (0 when the segments overlap)
    gap_mm: float  # surface-to-surface estimate; 0 when touching or overlapping
    target_point_ras: list[float]
    structure_point_ras: list[float]
    overlap_ml: float
    threshold_mm: float | None = None

    @property
    def alert(self) -> bool:
        return self.threshold_mm is not None and self.gap_mm < self.threshold_mm

    def as_dict(self) -> dict:
        return {**asdict(self), "alert": self.alert}


def closest_pair(grid: LabelGrid, target_mask: np.ndarray,
                 structure_mask: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(distance in mm, target voxel kji, structure voxel kji) of the closest pair of voxel centres."""
    box = bounding_box(target_mask | structure_mask)
    offset = np.array([s.start for s in box])
    structure = structure_mask[box]
    target = target_mask[box]
    overlap = target & structure
    if overlap.any():
        voxel = np.argwhere(overlap)[0] + offset
        return 0.0, voxel, voxel
    distance, nearest = ndimage.distance_transform_edt(~structure, sampling=grid.spacing_kji, return_indices=True)
    # the closest target voxel to the outside is on the target's surface; reading every target voxel is as exact
    candidates = np.argwhere(target)
    values = distance[tuple(candidates.T)]
    best = int(np.argmin(values))
    target_voxel = candidates[best]
    structure_voxel = nearest[(slice(None), *target_voxel)]
    return float(values[best]), target_voxel + offset, structure_voxel + offset


def surface_gap_mm(grid: LabelGrid, distance_mm: float, target_kji: np.ndarray, structure_kji: np.ndarray) -> float:
    """Surface-to-surface estimate: the centre distance less half a voxel's extent along the pair's direction.

    The nearest voxel centres of two segments lie, on average, a quarter voxel inside their true surfaces
    (measured on spheres at random positions and rotations: mean error -0.3 mm, at most 0.8 mm on a
    0.8×1.1×2 mm grid). Face-, edge- or corner-adjacent voxels touch: 0.
    """
    step = np.asarray(structure_kji, float) - np.asarray(target_kji, float)
    if distance_mm == 0.0 or np.abs(step).max() <= 1:
        return 0.0
    step_mm = step * np.array(grid.spacing_kji)
    direction = step_mm / np.linalg.norm(step_mm)
    extent = float(np.abs(direction) @ np.array(grid.spacing_kji))
    return max(0.0, distance_mm - extent / 2.0)


def proximity(grid: LabelGrid, target: str, structure: str, threshold_mm: float | None = None) -> Proximity:
    """How close ``structure`` comes to ``target``."""
    target_mask, structure_mask = grid.mask(target), grid.mask(structure)
    distance, target_voxel, structure_voxel = closest_pair(grid, target_mask, structure_mask)
    points = grid.ijk_to_ras_points(np.array([target_voxel, structure_voxel]))
    overlap_ml = float(np.count_nonzero(target_mask & structure_mask)) * grid.voxel_ml
    return Proximity(target, structure, round(distance, 4),
                     round(surface_gap_mm(grid, distance, target_voxel, structure_voxel), 4),
                     [round(float(v), 3) for v in points[0]], [round(float(v), 3) for v in points[1]],
                     round(overlap_ml, 4), threshold_mm)


def proximity_table(grid: LabelGrid, target: str, structures: Iterable[str] | None = None,
                    thresholds: Mapping[str, float] | None = None,
                    default_threshold_mm: float | None = None) -> list[Proximity]:
    """``target`` against each structure (default: every other present segment), nearest first."""
    thresholds = {k.lower(): v for k, v in (thresholds or {}).items()}
    names = list(structures) if structures else [n for n in grid.present_names() if n.lower() != target.lower()]
    rows = [proximity(grid, target, name, thresholds.get(name.lower(), default_threshold_mm)) for name in names]
    return sorted(rows, key=lambda row: (row.centre_distance_mm, row.structure))
