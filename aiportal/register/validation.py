"""Known smooth warps of real images: the ground truth for deformable registration (tests and bench).

:func:`known_warp` moves a real image by a smooth displacement made of Gaussian bumps, so every point's true
position in the warped copy is known. The warped (moving) image is ``M(y) = F(y + d(y))``; the true fixed →
moving map is therefore the inverse of ``y ↦ y + d(y)``, found per point by fixed-point iteration (converges
because the bumps keep ``|∇d| < 1``). TRE = distance between where a registration sends a fixed point and
where the truth does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Bump:
    """A Gaussian displacement: ``amplitude_mm`` (x, y, z LPS) at ``centre`` (fractions of the image extent)."""

    centre: tuple[float, float, float]
    amplitude_mm: tuple[float, float, float]
    sigma_mm: float


#: three overlapping bumps, up to ~12 mm, 50-60 mm wide: organ-scale motion (breathing, bowel, positioning) that
#: moves most of an abdomen by millimetres, not only a few spots
DEFAULT_BUMPS = (
    Bump((0.35, 0.45, 0.40), (9.0, -6.0, 5.0), 60.0),
    Bump((0.65, 0.55, 0.60), (-7.0, 5.0, -8.0), 55.0),
    Bump((0.50, 0.40, 0.70), (4.0, 8.0, 6.0), 50.0),
)


def _extent_point(image: sitk.Image, fraction) -> np.ndarray:
    index = [f * (s - 1) for f, s in zip(fraction, image.GetSize(), strict=True)]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def displacement(points: np.ndarray, image: sitk.Image, bumps=DEFAULT_BUMPS) -> np.ndarray:
    """``d(points)`` in mm (N, 3 LPS)."""
    total = np.zeros_like(points, dtype=float)
    for bump in bumps:
        centre = _extent_point(image, bump.centre)
        weight = np.exp(-((points - centre) ** 2).sum(axis=1) / (2 * bump.sigma_mm**2))
        total += weight[:, None] * np.array(bump.amplitude_mm)
    return total


def known_warp(image: sitk.Image, bumps=DEFAULT_BUMPS) -> sitk.Image:
    """``image`` warped by the bumps (linear interpolation, outside filled with the image's minimum)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.GetSize()], indexing="ij"), axis=-1).reshape(-1, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = (grid * np.array(image.GetSpacing())) @ direction.T + np.array(image.GetOrigin())
    field = displacement(points, image, bumps).reshape(*image.GetSize(), 3).transpose(2, 1, 0, 3)
    field_image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    field_image.CopyInformation(image)
    transform = sitk.DisplacementFieldTransform(field_image)
    low = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, image, transform, sitk.sitkLinear, low, image.GetPixelID())


def true_fixed_to_moving(points: np.ndarray, image: sitk.Image, bumps=DEFAULT_BUMPS, steps: int = 50) -> np.ndarray:
    """Where each fixed point lies in the warped copy: ``y`` with ``y + d(y) = x``."""
    moved = points.astype(float).copy()
    for _ in range(steps):
        moved = points - displacement(moved, image, bumps)
    return moved


def body_points(image: sitk.Image, threshold: float, count: int, seed: int = 1) -> np.ndarray:
    """``count`` random physical points (LPS) of voxels above ``threshold`` (e.g. -500 HU: the body on CT)."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(image) > threshold)[:, ::-1]
    chosen = indices[np.random.default_rng(seed).choice(len(indices), min(count, len(indices)), replace=False)]
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in idx]) for idx in chosen])
