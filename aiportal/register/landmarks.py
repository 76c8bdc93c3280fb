"""Corresponding landmarks and target registration error (TRE).

Landmark files use elastix's point format: a first line ``index`` (voxel indices i j k of the image
they were picked on) or ``point`` (physical LPS coordinates in mm), a second line with the number of
points, then one point per line. Index files are read on their volume's own geometry (IJK→RAS), so the
same file works wherever that volume sits in the scene.

TRE is measured where the registration is defined: each fixed landmark is mapped by the found
transform (fixed → moving, ITK's direction) and compared with its moving partner, in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from aiportal.errors import InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

PointKind = Literal["index", "point"]

#: RAS ↔ LPS for points: flip the first two axes.
_FLIP_POINT = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ElastixPoints:
    """The contents of an elastix point file: voxel indices (i, j, k) or LPS points in mm."""

    kind: PointKind
    values: np.ndarray  # (N, 3)


@dataclass(frozen=True)
class LandmarkPairs:
    """Corresponding points in RAS mm: ``fixed_ras[n]`` on the fixed volume matches ``moving_ras[n]``."""

    fixed_ras: np.ndarray
    moving_ras: np.ndarray

    def __post_init__(self):
        if self.fixed_ras.shape != self.moving_ras.shape or self.fixed_ras.ndim != 2 or self.fixed_ras.shape[1] != 3:
            raise InputError(
                f"Landmark lists do not pair up: {len(self.fixed_ras)} fixed and {len(self.moving_ras)} moving points",
                "give the same number of points in the same order in both files",
            )
        if len(self.fixed_ras) == 0:
            raise InputError("The landmark files hold no points", "add at least one corresponding point pair")


@dataclass(frozen=True)
class TargetRegistrationError:
    """Distances (mm) between the mapped fixed landmarks and their moving partners."""

    per_point_mm: np.ndarray

    @property
    def mean_mm(self) -> float:
        return float(self.per_point_mm.mean())

    @property
    def max_mm(self) -> float:
        return float(self.per_point_mm.max())

    def as_dict(self) -> dict:
        """JSON-ready summary (rounded to 0.01 mm: landmarks are picked on voxels, finer is noise)."""
        return {"mean_mm": round(self.mean_mm, 2), "max_mm": round(self.max_mm, 2),
                "per_point_mm": [round(float(v), 2) for v in self.per_point_mm], "points": len(self.per_point_mm)}


def read_elastix_points(path) -> ElastixPoints:
    """Parse an elastix point file (``index`` or ``point`` header, count, then x y z per line)."""
    path = Path(path)
    fix = "use elastix's point format: 'index' or 'point', the number of points, then one 'x y z' per line"
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read landmark file {path}: {error}", "check the path and that it is a text file") \
            from error
    if len(lines) < 2 or lines[0] != [lines[0][0]] or lines[0][0].lower() not in ("index", "point"):
        raise InputError(f"Landmark file {path} does not start with 'index' or 'point'", fix)
    try:
        count = int(lines[1][0])
        values = np.array([[float(v) for v in line] for line in lines[2:]], dtype=float)
    except ValueError as error:
        raise InputError(f"Landmark file {path} holds a value that is not a number: {error}", fix) from error
    if count != len(values) or (count and values.shape[1] != 3):
        raise InputError(f"Landmark file {path} announces {count} points but holds {len(values)} lines of 3 values",
                         fix)
    return ElastixPoints(lines[0][0].lower(), values.reshape(-1, 3))  # type: ignore[arg-type]


def points_ras(points: ElastixPoints, ijk_to_ras: np.ndarray) -> np.ndarray:
    """The points in RAS mm: indices through the volume's IJK→RAS, physical LPS points flipped."""
    if points.kind == "point":
        return points.values * _FLIP_POINT
    homogeneous = np.c_[points.values, np.ones(len(points.values))]
    return (homogeneous @ np.asarray(ijk_to_ras, dtype=float).T)[:, :3]


def read_landmark_pairs(fixed_path, moving_path, fixed_node, moving_node) -> LandmarkPairs:
    """Read corresponding landmark files, each on its own volume's geometry."""
    from aiportal.io.volumes import ijk_to_ras_matrix

    fixed = points_ras(read_elastix_points(fixed_path), ijk_to_ras_matrix(fixed_node))
    moving = points_ras(read_elastix_points(moving_path), ijk_to_ras_matrix(moving_node))
    return LandmarkPairs(fixed, moving)


def map_fixed_to_moving(transform: sitk.Transform, fixed_ras: np.ndarray) -> np.ndarray:
    """Fixed RAS points mapped by an ITK transform (fixed LPS → moving LPS), returned in moving RAS."""
    return np.array([np.array(transform.TransformPoint(tuple(float(v) for v in p * _FLIP_POINT))) * _FLIP_POINT
                     for p in fixed_ras]).reshape(-1, 3)


def target_registration_error(mapped_ras: np.ndarray, moving_ras: np.ndarray) -> TargetRegistrationError:
    """TRE of fixed landmarks already mapped into the moving space against their partners."""
    mapped_ras, moving_ras = np.asarray(mapped_ras, float), np.asarray(moving_ras, float)
    if mapped_ras.shape != moving_ras.shape:
        raise ValueError(f"point lists differ in shape: {mapped_ras.shape} and {moving_ras.shape}")
    return TargetRegistrationError(np.linalg.norm(mapped_ras - moving_ras, axis=1))


def transform_tre(transform: sitk.Transform, landmarks: LandmarkPairs) -> TargetRegistrationError:
    """TRE of an ITK fixed → moving transform on corresponding landmarks."""
    return target_registration_error(map_fixed_to_moving(transform, landmarks.fixed_ras), landmarks.moving_ras)


def residual_shift_mm(reference: sitk.Image, aligned: sitk.Image, points_lps: np.ndarray,
                      half_size_mm: float = 25.0) -> np.ndarray:
    """How far ``aligned`` still lies from ``reference`` around each point (mm), for images already registered.

    A cube of ``reference`` around each point is matched to ``aligned`` by a translation only (normalised
    correlation, so their intensity scales may differ); the length of that translation is the local residual.
    Checks a stored registration result (e.g. elastix's result image) where its transform is not at hand.
    """
    import SimpleITK as sitk

    reference, aligned = sitk.Cast(reference, sitk.sitkFloat32), sitk.Cast(aligned, sitk.sitkFloat32)
    residuals = []
    for point in np.asarray(points_lps, float):
        cubes = []
        for image, half in ((reference, half_size_mm), (aligned, half_size_mm + 10.0)):  # room to slide
            low = [max(0, v) for v in image.TransformPhysicalPointToIndex(tuple(point - half))]
            high = [min(size - 1, v) for size, v in
                    zip(image.GetSize(), image.TransformPhysicalPointToIndex(tuple(point + half)), strict=True)]
            if any(h - lo < 3 for lo, h in zip(low, high, strict=True)):
                raise InputError(f"Point {point.round(1).tolist()} (LPS mm) lies outside an image",
                                 "give points inside both images")
            cubes.append(image[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1])
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsCorrelation()
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=100)
        shift = sitk.TranslationTransform(3)
        method.SetInitialTransform(shift, inPlace=True)
        method.Execute(*cubes)
        residuals.append(float(np.linalg.norm(shift.GetOffset())))
    return np.array(residuals)
