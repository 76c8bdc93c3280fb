"""The optimisation stages of :func:`aiportal.register.register_volumes`: linear (rigid, affine) and B-spline.

Linear stages: multi-level regular-step gradient descent, scales from physical shift, at most
``_METRIC_SAMPLES`` fixed points (always the same ones). The B-spline defaults are in :func:`bspline_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from aiportal.errors import AIPortalError, CancelledError
from aiportal.progress import CancelToken, ProgressCallback, scaled

_LINEAR_ITERATIONS = 200
_METRIC_SAMPLES = 50_000
_BSPLINE_ITERATIONS = 100
# ITK's B-spline, now only for different contrasts (Mattes mutual information); same-contrast pairs run ours
# (aiportal/register/bspline.py). On a real CT warped by a known smooth field it reached a median TRE of
# 1.11 mm in ~390 s with mean squares (bench/bench_registration_bspline.py); its MI numbers are in that bench.
_BSPLINE_SAMPLES = 10_000
_BSPLINE_MESH_SPACING_MM = 25.0  # control-point spacing: organ-scale warps (bumps of 50-60 mm), few parameters


class _StopRequested(Exception):
    """Raised inside an iteration callback to abort a registration that did not stop when asked."""


class _Stage:
    """One optimisation run: maps its iteration events onto progress and handles cancel."""

    def __init__(self, method: sitk.ImageRegistrationMethod, name: str, levels: int, iterations: int,
                 progress: ProgressCallback, cancel: CancelToken | None):
        self.method, self.name, self.levels, self.iterations = method, name, levels, iterations
        self.progress, self.cancel = progress, cancel
        self.cancelled = False
        self.total_iterations = 0
        method.AddCommand(sitk.sitkIterationEvent, self._on_iteration)

    def _on_iteration(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            if self.cancelled:
                # the optimiser ignored the stop (LBFGSB does): an exception in the callback aborts Execute
                raise _StopRequested
            self.cancelled = True
            self.method.StopRegistration()
            return
        self.total_iterations += 1
        level = self.method.GetCurrentLevel()
        within = min(self.method.GetOptimizerIteration() / self.iterations, 1.0)
        self.progress((level + within) / self.levels, f"{self.name} level {level + 1}/{self.levels}")

    def run(self, fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
        try:
            transform = self.method.Execute(fixed, moving)
        except RuntimeError as error:  # SimpleITK wraps the callback's exception (and prints its traceback)
            if self.cancelled:
                raise CancelledError("the registration") from error
            raise
        if self.cancelled:
            raise CancelledError("the registration")
        if not np.isfinite(self.method.GetMetricValue()) or self.method.GetMetricValue() > 1e300:
            # ITK reports "no valid points" as the largest double: the images drifted apart
            raise AIPortalError(
                f"The {self.name} registration lost the overlap between the images",
                "use mutual information for different contrasts, or initialise by moments or with masks",
            )
        return transform


def make_method(metric: str, levels: int, fixed_voxels: int, fixed_mask: sitk.Image | None,
                moving_mask: sitk.Image | None, samples: int = _METRIC_SAMPLES) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if metric == "mean_squares":
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # at most _METRIC_SAMPLES fixed points, always the same ones: fast on big scans and reproducible
    fraction = min(1.0, samples / fixed_voxels)
    if fraction < 1.0:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(fraction, seed=1)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2**level for level in reversed(range(levels))])
    method.SetSmoothingSigmasPerLevel([float(level) for level in reversed(range(levels))])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The optimised linear transform (Euler or affine, possibly wrapped by Execute) as one affine."""
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetBackTransform()
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    affine.SetCenter(transform.GetCenter())
    return affine


def stage_start(transform: sitk.AffineTransform, name: str) -> sitk.Transform:
    """``transform`` as the parameterisation stage ``name`` optimises (rigid: Euler angles; affine: 12)."""
    if name == "affine":
        return transform
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(transform.GetCenter())
    # nearest rotation to the (possibly slightly non-orthogonal) matrix
    u, _, vt = np.linalg.svd(np.array(transform.GetMatrix()).reshape(3, 3))
    rigid.SetMatrix((u @ vt).ravel().tolist())
    rigid.SetTranslation(transform.GetTranslation())
    return rigid


class StageRunner:
    """Runs linear stages one after another, each taking one of ``shares`` equal parts of the progress."""

    def __init__(self, fixed: sitk.Image, levels: int, fixed_mask: sitk.Image | None,
                 moving_mask: sitk.Image | None, progress: ProgressCallback, cancel: CancelToken | None,
                 shares: int):
        self.fixed, self.levels, self.fixed_mask, self.moving_mask = fixed, levels, fixed_mask, moving_mask
        self.progress, self.cancel, self.shares = progress, cancel, shares
        self.done = 0
        self.iterations = 0
        self.notes: list[str] = []
        self.final_metric = float("nan")

    def skip(self) -> None:
        self.done += 1

    def run(self, name: str, metric: str, moving: sitk.Image, start: sitk.Transform, *, note: str = "",
            keep_note: bool = True, may_fail: bool = False, levels: int | None = None) -> sitk.Transform | None:
        """The optimised transform (``None`` when ``may_fail`` and the images drifted apart)."""
        levels = levels or self.levels
        method = make_method(metric, levels, self.fixed.GetNumberOfPixels(), self.fixed_mask, self.moving_mask)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=_LINEAR_ITERATIONS, relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()  # balance rotation (rad) against translation (mm)
        method.SetInitialTransform(start, inPlace=False)
        stage_progress = scaled(self.progress, self.done / self.shares, (self.done + 1) / self.shares)
        self.done += 1
        stage = _Stage(method, name if not note else f"{name} ({note})", levels, _LINEAR_ITERATIONS,
                       stage_progress, self.cancel)
        try:
            transform = stage.run(self.fixed, moving)
        except AIPortalError:
            if may_fail:
                return None
            raise
        self.iterations += stage.total_iterations
        if keep_note:
            self.notes.append(f"{name}{f' ({note})' if note else ''}, {metric}: "
                              f"{method.GetOptimizerStopConditionDescription()}")
            self.final_metric = method.GetMetricValue()
        return transform


@dataclass
class Warp:
    transform: sitk.BSplineTransform
    coefficients: list[np.ndarray]
    final_metric: float
    iterations: int
    note: str


def bspline_stage(fixed: sitk.Image, moving: sitk.Image, linear: sitk.AffineTransform, metric: str, levels: int,
                  fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None, progress: ProgressCallback,
                  cancel: CancelToken | None) -> Warp:
    """A B-spline warp on top of the fixed ``linear`` result."""
    method = make_method(metric, levels, fixed.GetNumberOfPixels(), fixed_mask, moving_mask, _BSPLINE_SAMPLES)
    mesh = [max(1, int(round(size * spacing / _BSPLINE_MESH_SPACING_MM)))
            for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method.SetMovingInitialTransform(linear)
    # one control grid for all levels: LBFGSB cannot follow a grid refined between levels
    method.SetInitialTransform(bspline, inPlace=True)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=_BSPLINE_ITERATIONS)
    stage = _Stage(method, "bspline", levels, _BSPLINE_ITERATIONS, progress, cancel)
    stage.run(fixed, moving)
    return Warp(bspline, [sitk.GetArrayFromImage(image) for image in bspline.GetCoefficientImages()],
                method.GetMetricValue(), stage.total_iterations,
                f"bspline, {metric}: {method.GetOptimizerStopConditionDescription()}")
