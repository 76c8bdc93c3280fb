"""Register a moving volume to a fixed volume with SimpleITK, and put the result into the scene.

Why SimpleITK with our settings and not elastix (bench/bench_registration.py, one run, shared 2-core machine):

- nibabel known rigid motion (2 mm MR → 4 mm SPM copy): ours 0.29 mm TRE, 0.19°, angles (0.1008, 0.1981,
  0.2972) rad for (0.1, 0.2, 0.3), translation (2.88, 4.20, 4.86) mm for (3, 4, 5), 0.65 s, +8 MB.
  elastix's default rigid map fails (70° off, 34 mm TRE; 67° even when centred), 1.6-3x our time,
  1.4 GB peak for the itk import; SimpleITK's textbook setup fails too (29° off).
- elastix 3DCT_lung lung masks, affine, landmark TRE: ours 5.3 mm, 14.5 s; elastix defaults stop with
  "too many samples map outside moving image" (no initialisation); centred elastix 8.9 mm in 0.7x our time;
  SimpleITK textbook 7.9 mm in 0.28x.
- So: SimpleITK (already a dependency, shipped by Slicer) with multi-level regular-step descent, scales from
  physical shift and a fixed sample set is the most accurate of the three on both pairs; itk-elastix would add
  a ~1 GB-resident dependency for worse results at its defaults. It stays a bench-only peer.

Conventions (the one Slicer uses for a transform node that is the moving volume's parent):

- ``RegistrationResult.matrix_ras`` maps **moving RAS → fixed RAS** ("transform to parent").
  Placing the moving volume under the transform node lines it up with the fixed volume.
- ITK optimises the opposite map (fixed LPS → moving LPS, the resampling direction); the
  conversion is ``matrix_ras = F · inverse(T_lps) · F`` with ``F = diag(-1, -1, 1, 1)``.
- A B-spline result is kept in ITK's direction (fixed → moving, LPS) as ``RegistrationResult.itk_transform``
  and becomes the *from-parent* transform of a B-spline transform node, as Slicer's own
  transform reader does for ITK files.
- Each volume's own geometry (IJK→RAS) is used; transforms the volumes are already under are ignored,
  so registering again after :func:`apply_to_scene` gives the same answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk
import vtk

from aiportal.errors import AIPortalError, CancelledError, InputError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix
from aiportal.progress import CancelToken, ProgressCallback, no_progress, scaled
from aiportal.register.landmarks import LandmarkPairs, TargetRegistrationError, transform_tre

if TYPE_CHECKING:
    from aiportal.runtime import SlicerRuntime

Kind = Literal["rigid", "affine", "bspline"]
Metric = Literal["auto", "mean_squares", "mutual_information"]
Initialization = Literal["geometry", "moments", "none"]

#: RAS ↔ LPS: flip the first two axes (its own inverse).
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

# Node reference roles and attributes set on transform nodes made here.
FIXED_REFERENCE = "fixedVolume"
MOVING_REFERENCE = "movingVolume"
_ATTRIBUTE_PREFIX = "AIPortal.Registration."

_LINEAR_ITERATIONS = 200
_METRIC_SAMPLES = 50_000
_BSPLINE_ITERATIONS = 100
_BSPLINE_MESH_SPACING_MM = 40.0  # control-point spacing: smooth, organ-scale warps, few parameters


@dataclass
class RegistrationResult:
    """What a registration found.

    ``matrix_ras`` maps moving RAS → fixed RAS (for B-spline: the affine part found before the warp).
    ``itk_transform`` is the full optimised transform in ITK's direction (fixed LPS → moving LPS): an
    ``AffineTransform`` for rigid and affine, a ``CompositeTransform`` [affine, B-spline] for bspline.
    ``bspline_coefficients`` are the B-spline's (x, y, z) LPS displacement coefficients in mm, (k, j, i) arrays.
    ``tre`` is the target registration error on the landmarks given to :func:`register_volumes` (else None);
    ``unregistered_tre`` the same landmarks' error in the scanner coordinates, before any registration.
    """

    kind: str
    metric: str
    matrix_ras: np.ndarray
    itk_transform: sitk.Transform
    final_metric: float
    iterations: int
    elapsed_s: float
    bspline_coefficients: list[np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    tre: TargetRegistrationError | None = None
    unregistered_tre: TargetRegistrationError | None = None


def image_from_node(node, array: np.ndarray | None = None) -> sitk.Image:
    """The node's voxels (or ``array`` on its grid) as a SimpleITK image with LPS geometry."""
    values = array_from_volume(node) if array is None else array
    image = sitk.GetImageFromArray(values)  # numpy (k, j, i) → ITK index (i, j, k)
    ijk_to_lps = _FLIP @ ijk_to_ras_matrix(node)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
    return image


def _check_volume(node, role: str) -> sitk.Image:
    if node is None or node.GetImageData() is None:
        raise InputError(f"The {role} volume has no image data", f"choose a loaded volume as the {role} image")
    array = array_from_volume(node)
    if array.ndim != 3:
        raise InputError(f"The {role} volume {node.GetName()} has several components per voxel",
                         "register single-component (scalar) volumes")
    if array.size == 0:
        raise InputError(f"The {role} volume {node.GetName()} is empty", f"choose a non-empty {role} volume")
    if min(array.shape) < 2:
        raise InputError(
            f"The {role} volume {node.GetName()} is 2D ({array.shape[2]}x{array.shape[1]}x{array.shape[0]} voxels)",
            "3D registration needs at least 2 voxels along every axis; choose a 3D volume",
        )
    if float(array.max()) == float(array.min()):
        raise InputError(f"The {role} volume {node.GetName()} is constant ({array.flat[0]})",
                         "registration needs image contrast; check that the right volume was chosen")
    return sitk.Cast(image_from_node(node, array), sitk.sitkFloat32)


def _mask_image(mask, node, role: str) -> sitk.Image | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    shape = array_from_volume(node).shape
    if mask.shape != shape:
        raise InputError(
            f"The {role} mask has shape {mask.shape} but the {role} volume {node.GetName()} has {shape} (k, j, i)",
            f"make the mask on the {role} volume's grid, e.g. with segment_mask(segmentation, segment, {role} volume)",
        )
    if not mask.any():
        raise InputError(f"The {role} mask is empty", "choose a segment that covers the region to align")
    return image_from_node(node, mask.astype(np.uint8))


def _corners(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    indices = [(i, j, k) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]) for idx in indices])


def _check_overlap(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform) -> None:
    """Refuse pairs whose physical boxes do not meet: the metric would have nothing to compare."""
    mapped = np.array([initial.TransformPoint(tuple(p)) for p in _corners(fixed)])
    moving_corners = _corners(moving)
    low = np.maximum(mapped.min(axis=0), moving_corners.min(axis=0))
    high = np.minimum(mapped.max(axis=0), moving_corners.max(axis=0))
    if np.any(low >= high):
        raise InputError(
            "The fixed and moving volumes do not overlap in space after initialisation",
            "initialise by geometry or moments, or check that the right volumes were chosen",
        )


def _linear_to_ras(linear: sitk.AffineTransform) -> np.ndarray:
    """Moving RAS → fixed RAS matrix of a fixed LPS → moving LPS affine ITK transform."""
    matrix = np.array(linear.GetMatrix()).reshape(3, 3)
    center = np.array(linear.GetCenter())
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = matrix
    fixed_to_moving[:3, 3] = center + np.array(linear.GetTranslation()) - matrix @ center
    return _FLIP @ np.linalg.inv(fixed_to_moving) @ _FLIP


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


def _method(metric: str, levels: int, fixed_voxels: int, fixed_mask: sitk.Image | None,
            moving_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if metric == "mean_squares":
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # at most _METRIC_SAMPLES fixed points, always the same ones: fast on big scans and reproducible
    fraction = min(1.0, _METRIC_SAMPLES / fixed_voxels)
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


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, initialization: str) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    if initialization == "none":
        return transform  # identity: trust the scanner coordinates (e.g. same-session scans)
    how = (sitk.CenteredTransformInitializerFilter.MOMENTS if initialization == "moments"
           else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return sitk.CenteredTransformInitializer(fixed, moving, transform, how)


def register_volumes(
    fixed_node,
    moving_node,
    *,
    kind: Kind = "rigid",
    metric: Metric = "auto",
    initialization: Initialization = "geometry",
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    levels: int = 3,
    landmarks: LandmarkPairs | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> RegistrationResult:
    """Find the transform that aligns ``moving_node`` to ``fixed_node``; nothing is added to the scene.

    ``kind`` runs stages: rigid; rigid then affine; rigid, affine then a B-spline warp on top.
    ``metric="auto"`` uses Mattes mutual information (any pair of contrasts); ``mean_squares`` is
    more precise when both volumes have the same contrast.
    Masks are boolean (k, j, i) arrays on their volume's grid (e.g. from ``segment_mask``); the
    metric only samples inside them. ``initialization="none"`` starts from the scanner coordinates.
    ``landmarks`` (corresponding points, e.g. from :func:`~aiportal.register.landmarks.read_landmark_pairs`) only
    measure the result: they fill ``tre`` and ``unregistered_tre`` and never steer the optimisation.
    Raises :class:`InputError` for unusable input and :class:`CancelledError` when cancelled.
    """
    if kind not in ("rigid", "affine", "bspline"):
        raise InputError(f"Unknown registration type {kind!r}", "use rigid, affine or bspline")
    if metric not in ("auto", "mean_squares", "mutual_information"):
        raise InputError(f"Unknown metric {metric!r}", "use auto, mean_squares or mutual_information")
    if initialization not in ("geometry", "moments", "none"):
        raise InputError(f"Unknown initialisation {initialization!r}", "use geometry, moments or none")
    if not 1 <= levels <= 5:
        raise InputError(f"levels must be 1 to 5, got {levels}", "use 3 for most pairs")
    start = time.perf_counter()
    fixed = _check_volume(fixed_node, "fixed")
    moving = _check_volume(moving_node, "moving")
    fixed_mask_image = _mask_image(fixed_mask, fixed_node, "fixed")
    moving_mask_image = _mask_image(moving_mask, moving_node, "moving")
    metric_name = "mutual_information" if metric == "auto" else metric

    initial = _initial_transform(fixed, moving, initialization)
    _check_overlap(fixed, moving, initial)
    # affine starts from the rigid answer: its 12 parameters drift when optimised from the initialisation alone
    stage_names = ["rigid", "affine", "bspline"][: ("rigid", "affine", "bspline").index(kind) + 1]
    share = 1.0 / len(stage_names)
    transform: sitk.Transform = initial
    iterations, notes, final_metric = 0, [], float("nan")
    for index, name in enumerate(name for name in stage_names if name != "bspline"):
        if name == "affine":
            transform = _as_affine(transform)
        method = _method(metric_name, levels, fixed.GetNumberOfPixels(), fixed_mask_image, moving_mask_image)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=_LINEAR_ITERATIONS, relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()  # balance rotation (rad) against translation (mm)
        method.SetInitialTransform(transform, inPlace=False)
        stage_progress = scaled(progress, index * share, (index + 1) * share)
        stage = _Stage(method, name, levels, _LINEAR_ITERATIONS, stage_progress, cancel)
        transform = stage.run(fixed, moving)
        iterations += stage.total_iterations
        notes.append(f"{name}: {method.GetOptimizerStopConditionDescription()}")
        final_metric = method.GetMetricValue()
    linear = _as_affine(transform)
    matrix_ras = _linear_to_ras(linear)
    transform, coefficients = linear, None

    if kind == "bspline":
        bspline_method = _method(metric_name, levels, fixed.GetNumberOfPixels(), fixed_mask_image, moving_mask_image)
        mesh = [max(1, int(round(size * spacing / _BSPLINE_MESH_SPACING_MM)))
                for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        bspline_method.SetMovingInitialTransform(linear)  # warp on top of the fixed affine result
        # one control grid for all levels: LBFGSB cannot follow a grid refined between levels
        bspline_method.SetInitialTransform(bspline, inPlace=True)
        bspline_method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=_BSPLINE_ITERATIONS)
        stage_progress = scaled(progress, 1.0 - share, 1.0)
        stage = _Stage(bspline_method, "bspline", levels, _BSPLINE_ITERATIONS, stage_progress, cancel)
        stage.run(fixed, moving)
        iterations += stage.total_iterations
        notes.append(f"bspline: {bspline_method.GetOptimizerStopConditionDescription()}")
        final_metric = bspline_method.GetMetricValue()
        coefficients = [sitk.GetArrayFromImage(image) for image in bspline.GetCoefficientImages()]
        transform = sitk.CompositeTransform([linear, bspline])  # ITK applies the last one first
    elapsed_s = time.perf_counter() - start
    tre = unregistered_tre = None
    if landmarks is not None:
        tre, unregistered_tre = transform_tre(transform, landmarks), transform_tre(sitk.Transform(), landmarks)
    progress(1.0, "registration done")
    return RegistrationResult(
        kind=kind, metric=metric_name, matrix_ras=matrix_ras, itk_transform=transform,
        final_metric=float(final_metric), iterations=iterations, elapsed_s=elapsed_s,
        bspline_coefficients=coefficients, notes=notes, tre=tre, unregistered_tre=unregistered_tre,
    )


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The optimised linear transform (Euler or affine, possibly wrapped by Execute) as one affine."""
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetBackTransform()
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    affine.SetCenter(transform.GetCenter())
    return affine


def resample(runtime: SlicerRuntime, result: RegistrationResult, fixed_node, moving_node, *,
             name: str | None = None, labels: bool = False):
    """A new volume node: the moving volume resampled onto the fixed grid (nearest neighbour for ``labels``)."""
    from aiportal.io.volumes import volume_node_from_array

    moving = image_from_node(moving_node)
    grid = image_from_node(fixed_node, np.zeros(array_from_volume(fixed_node).shape, np.uint8))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    warped = sitk.Resample(moving, grid, result.itk_transform, interpolator, 0.0, moving.GetPixelID())
    node_class = "vtkMRMLLabelMapVolumeNode" if labels else "vtkMRMLScalarVolumeNode"
    return volume_node_from_array(runtime.scene, sitk.GetArrayFromImage(warped), ijk_to_ras_matrix(fixed_node),
                                  name or f"{moving_node.GetName()} registered", node_class)


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def transform_matrix(node) -> np.ndarray:
    """A linear transform node's moving → fixed (to-parent) matrix."""
    matrix = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def apply_to_scene(runtime: SlicerRuntime, result: RegistrationResult, fixed_node, moving_node, *,
                   name: str | None = None, observe: bool = True):
    """A transform node holding ``result``, referencing both volumes; the moving volume is placed under it.

    Linear results become a ``vtkMRMLLinearTransformNode``; B-spline results a
    ``vtkMRMLBSplineTransformNode`` (read from the ITK transform the way Slicer reads .h5 files).
    """
    name = name or f"{moving_node.GetName()} to {fixed_node.GetName()} ({result.kind})"
    if result.kind == "bspline":
        node = _bspline_node(runtime, result, name)
    else:
        node = runtime.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetMatrixTransformToParent(_vtk_matrix(result.matrix_ras))
    node.SetNodeReferenceID(FIXED_REFERENCE, fixed_node.GetID())
    node.SetNodeReferenceID(MOVING_REFERENCE, moving_node.GetID())
    node.SetAttribute(_ATTRIBUTE_PREFIX + "Kind", result.kind)
    node.SetAttribute(_ATTRIBUTE_PREFIX + "Metric", result.metric)
    node.SetAttribute(_ATTRIBUTE_PREFIX + "FinalMetricValue", f"{result.final_metric:.6g}")
    if observe:
        moving_node.SetAndObserveTransformNodeID(node.GetID())
    return node


def _bspline_node(runtime: SlicerRuntime, result: RegistrationResult, name: str):
    import tempfile

    # Slicer's ITK reader does the LPS → RAS conversion of the grid and coefficients; reuse it rather than redo it
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bspline.h5"
        sitk.WriteTransform(result.itk_transform, str(path))
        node = runtime.scene.AddNewNodeByClass("vtkMRMLBSplineTransformNode", name)
        if not _storage(path).ReadData(node):
            runtime.scene.RemoveNode(node)
            raise AIPortalError("Slicer could not read the B-spline transform back", "report this as a bug")
    return node


def _storage(path: Path):
    import slicer

    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    return storage


def save_transform(node, path) -> Path:
    """Write a transform node to .h5/.tfm/.txt with Slicer's transform storage node (ITK file, LPS)."""
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5", ".tfm", ".txt", ".mat"):
        raise AIPortalError(f"Cannot save transform to {path}: unknown file type", "use .h5 or .tfm")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _storage(path).WriteData(node) or not path.exists():
        raise AIPortalError(f"Could not write transform {node.GetName()} to {path}",
                            "check that the folder is writable and the disk is not full")
    return path


def load_transform(runtime: SlicerRuntime, path, node_class: str = "vtkMRMLLinearTransformNode"):
    """Read a transform file written by :func:`save_transform` (or any ITK transform file) into a new node."""
    path = Path(path)
    node = runtime.scene.AddNewNodeByClass(node_class, path.name.split(".")[0])
    if not _storage(path).ReadData(node):
        runtime.scene.RemoveNode(node)
        raise InputError(f"Cannot read transform file {path}", "check that it is an ITK .h5 or .tfm transform")
    return node
