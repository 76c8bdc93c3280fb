"""Margin shells and virtual resection (planes, a drawn surface or a target plus margin), with remnant volumes.

Volumes are voxel counts × voxel volume, so the remnant percentage is exactly the voxel-count
ratio. Distances to a cut plane are signed distances of voxel centres (positive: resected side).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from aiportal.errors import InputError
from aiportal.planning.grid import LabelGrid, bounding_box


@dataclass
class Plane:
    """A cut plane: a point and a normal (RAS, mm); the normal points at the part removed."""

    point_ras: tuple[float, float, float]
    normal_ras: tuple[float, float, float]

    def __post_init__(self) -> None:
        normal = np.asarray(self.normal_ras, float)
        if np.linalg.norm(normal) == 0:
            raise InputError(f"plane normal {list(self.normal_ras)} is zero", "give a non-zero normal vector")
        self.normal_ras = tuple(float(v) for v in normal / np.linalg.norm(normal))

    def signed_distance(self, ras: np.ndarray) -> np.ndarray:
        return (ras - np.asarray(self.point_ras, float)) @ np.asarray(self.normal_ras, float)


def dilate_mm(grid: LabelGrid, mask: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``margin_mm`` of a voxel centre of ``mask`` (exact, anisotropic)."""
    if margin_mm < 0:
        raise InputError(f"margin {margin_mm} mm is negative", "give a margin ≥ 0 mm")
    reach = np.ceil(margin_mm / np.array(grid.spacing_kji)).astype(int) + 1
    box = bounding_box(mask, reach)
    distance = ndimage.distance_transform_edt(~mask[box], sampling=grid.spacing_kji)
    grown = np.zeros_like(mask)
    grown[box] = distance <= margin_mm + 1e-6
    return grown


@dataclass
class MarginShell:
    target: str
    margin_mm: float
    shell_ml: float
    touches: dict[str, float] = field(default_factory=dict)  # structure → ml of it inside the shell


def margin_shell(grid: LabelGrid, target: str, margin_mm: float) -> tuple[MarginShell, np.ndarray]:
    """The shell target + ``margin_mm`` minus the target, and what it contains (ml per structure)."""
    mask = grid.mask(target)
    shell = dilate_mm(grid, mask, margin_mm) & ~mask
    values, counts = np.unique(grid.labels[shell], return_counts=True)
    touches = {grid.names.get(int(v), f"label_{v}"): round(float(c) * grid.voxel_ml, 3)
               for v, c in zip(values, counts, strict=True) if v}
    result = MarginShell(target, margin_mm, round(float(np.count_nonzero(shell)) * grid.voxel_ml, 3),
                         dict(sorted(touches.items(), key=lambda kv: -kv[1])))
    return result, shell


@dataclass
class Resection:
    organ: str
    organ_ml: float
    resected_ml: float
    remnant_ml: float
    remnant_percent: float
    organ_voxels: int
    remnant_voxels: int
    method: str
    target: str | None = None
    target_margin_mm: float | None = None  # target voxel centres to the cut (≥ 0: all on the resected side)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _depth(grid: LabelGrid, kji: np.ndarray, planes: list[Plane], combine: str) -> np.ndarray:
    """Signed depth of voxels into the removed region (> 0: removed)."""
    ras = grid.ijk_to_ras_points(kji)
    distances = np.stack([plane.signed_distance(ras) for plane in planes])
    # inside an intersection of half-spaces, the depth is the smallest distance; inside a union, the largest
    return distances.min(axis=0) if combine == "all" else distances.max(axis=0)


def _removed_by_planes(grid: LabelGrid, organ_mask: np.ndarray, planes: list[Plane], combine: str) -> np.ndarray:
    """The organ voxels beyond the planes (only the organ's voxels are evaluated: memory stays small)."""
    kji = np.argwhere(organ_mask)
    removed = np.zeros_like(organ_mask)
    removed[tuple(kji[_depth(grid, kji, planes, combine) > 0].T)] = True
    return removed


def _removed_by_surface(grid: LabelGrid, organ_mask: np.ndarray, surface) -> np.ndarray:
    kji = np.argwhere(organ_mask)
    removed = np.zeros_like(organ_mask)
    removed[tuple(kji[surface.side(grid.ijk_to_ras_points(kji)) > 0].T)] = True
    return removed


def resect(grid: LabelGrid, organ: str, *, planes: list[Plane] | None = None, combine: str = "all",
           target: str | None = None, margin_mm: float | None = None, surface=None) -> tuple[Resection, np.ndarray]:
    """Remove from ``organ`` the part beyond the planes (``all``: their intersection, ``any``: union), beyond a
    drawn ``surface`` (:class:`~aiportal.planning.surface_cut.CutSurface`), or ``target`` + ``margin_mm`` when
    neither is given. Returns the figures and the resected mask."""
    organ_mask = grid.mask(organ)
    warnings: list[str] = []
    target_margin = None
    if planes and surface is not None:
        raise InputError("a resection takes cut planes or a drawn surface, not both", "give one of them")
    if surface is not None:
        removed = _removed_by_surface(grid, organ_mask, surface)
        method = f"drawn surface ({len(surface.points_ras)} points)"
        if target:
            step = float(min(grid.spacing_ijk)) / 2.0
            target_margin = round(float(surface.signed_distance(grid.surface_ras(target), step).min()), 3)
            if target_margin < 0:
                warnings.append(f"{target} crosses the cut: part of it stays in the remnant "
                                f"(up to {-target_margin:.1f} mm beyond the surface)")
    elif planes:
        if combine not in ("all", "any"):
            raise InputError(f"combine {combine!r} is unknown", "use 'all' (wedge) or 'any' (union of half-spaces)")
        removed = _removed_by_planes(grid, organ_mask, planes, combine)
        method = f"{len(planes)} plane(s), {combine}"
        if target:
            target_margin = round(float(_depth(grid, np.argwhere(grid.mask(target)), planes, combine).min()), 3)
            if target_margin < 0:
                warnings.append(f"{target} crosses the cut: part of it stays in the remnant "
                                f"(up to {-target_margin:.1f} mm beyond the plane)")
    elif target and margin_mm is not None:
        removed = dilate_mm(grid, grid.mask(target), margin_mm)
        method = f"{target} + {margin_mm:g} mm"
        target_margin = float(margin_mm)
    else:
        raise InputError("a resection needs cut planes, a drawn surface or a target with a margin",
                         "pass --plane, --surface-point/--surface-markups, or --target and --margin")
    resected = organ_mask & removed
    organ_voxels = int(np.count_nonzero(organ_mask))
    remnant_voxels = organ_voxels - int(np.count_nonzero(resected))
    if remnant_voxels == 0:
        warnings.append(f"the whole {organ} is resected: no remnant")
    if remnant_voxels == organ_voxels:
        warnings.append(f"the cut does not touch {organ}: nothing resected")
    result = Resection(organ, round(organ_voxels * grid.voxel_ml, 3),
                       round((organ_voxels - remnant_voxels) * grid.voxel_ml, 3),
                       round(remnant_voxels * grid.voxel_ml, 3), round(100.0 * remnant_voxels / organ_voxels, 3),
                       organ_voxels, remnant_voxels, method, target, target_margin, warnings)
    return result, resected
