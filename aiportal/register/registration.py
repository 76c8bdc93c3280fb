"""Register a moving volume to a fixed volume with SimpleITK, and put the result into the scene.

Why SimpleITK with our settings and not elastix (bench/bench_registration.py, one run, shared 2-core machine):

- nibabel known rigid motion (2 mm MR → 4 mm SPM copy): ours 0.29 mm TRE, 0.19°, angles (0.1008, 0.1981,
  0.2972) rad for (0.1, 0.2, 0.3), translation (2.88, 4.20, 4.86) mm for (3, 4, 5), 0.65 s, +8 MB.
  elastix's default rigid map fails (70° off, 34 mm TRE; 67° even when centred), 1.6-3x our time,
  1.4 GB peak for the itk import; SimpleITK's textbook setup fails too (29° off).
- elastix 3DCT_lung lung masks, affine, landmark TRE: ours 5.3 mm, 14.5 s; elastix defaults stop with
  "too many samples map outside moving image" (no initialisation); centred elastix 8.9 mm in 0.7x our time;
  SimpleITK textbook 7.9 mm in 0.28x.
- B-spline: same-contrast pairs use our numpy/SciPy warp (:mod:`aiportal.register.bspline`, ahead of elastix's
  B-spline map in TRE and time on real CTs warped by a known field); different contrasts ITK's Mattes MI B-spline.
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

from aiportal.errors import AIPortalError, InputError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix
from aiportal.progress import CancelToken, ProgressCallback, no_progress, scaled
from aiportal.register.auto import (
    MIN_SHARPNESS,
    PERTURB_DEG,
    PERTURB_MM,
    MetricChoice,
    alignment_sharpness,
    choose_metric,
    consistency_tolerance_mm,
    corner_disagreement_mm,
    corners,
    data_mask,
    fitted_moving,
    perturbed,
)
from aiportal.register.bspline import fast_bspline_stage
from aiportal.register.landmarks import LandmarkPairs, TargetRegistrationError, transform_tre
from aiportal.register.stages import StageRunner, as_affine, bspline_stage, stage_start

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
    initialization: str = "geometry"
    metric_choice: MetricChoice | None = None
    consistency_mm: float = float("nan")
    consistency_tolerance_mm: float = float("nan")
    sharpness: float = float("nan")
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready: what was run, what auto picked and why, the independent check and its warnings."""
        return {
            "kind": self.kind, "metric": self.metric, "initialization": self.initialization,
            "metric_choice": None if self.metric_choice is None else {
                "picked": self.metric_choice.metric, "reason": self.metric_choice.reason,
                "intensity_correlation": self.metric_choice.correlation},
            "final_metric": self.final_metric, "iterations": self.iterations, "elapsed_s": round(self.elapsed_s, 3),
            "moving_to_fixed_ras": np.asarray(self.matrix_ras).tolist(),
            "consistency_check": {"disagreement_mm": round(self.consistency_mm, 3),
                                  "tolerance_mm": round(self.consistency_tolerance_mm, 3),
                                  "passed": bool(self.consistency_mm <= self.consistency_tolerance_mm)},
            "edge_alignment_check": {"sharpness": round(self.sharpness, 3), "minimum": MIN_SHARPNESS,
                                     "passed": bool(self.sharpness >= MIN_SHARPNESS)},
            "tre": self.tre.as_dict() if self.tre else None,
            "unregistered_tre": self.unregistered_tre.as_dict() if self.unregistered_tre else None,
            "notes": self.notes, "warnings": self.warnings,
        }


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


def _check_overlap(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform) -> None:
    """Refuse pairs whose physical boxes do not meet: the metric would have nothing to compare."""
    mapped = np.array([initial.TransformPoint(tuple(p)) for p in corners(fixed)])
    moving_corners = corners(moving)
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
    ``metric="auto"`` aligns with Mattes mutual information (any pair of contrasts), then refines with
    mean squares when the two share a contrast (:mod:`aiportal.register.auto`); ``result.metric_choice`` says
    what it picked and why. Every result is re-optimised from a perturbed start; disagreement beyond the
    tolerance (and landmarks worse than before) lands in ``result.warnings``.
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
    if metric == "auto":  # resampling padding is no image: keep it out of the metric unless masks were given
        if fixed_mask is None:
            fixed_mask_image = data_mask(fixed)
        if moving_mask is None:
            moving_mask_image = data_mask(moving)

    initial = _initial_transform(fixed, moving, initialization)
    _check_overlap(fixed, moving, initial)
    # affine starts from the rigid answer: its 12 parameters drift when optimised from the initialisation alone
    linear_names = ["rigid", "affine"][: 1 + (kind != "rigid")]
    # progress: each linear stage, auto's refinement, the consistency check and the warp get equal shares
    shares = len(linear_names) + (metric == "auto") + 1 + (kind == "bspline")
    linear = StageRunner(fixed, levels, fixed_mask_image, moving_mask_image, progress, cancel, shares)
    transform: sitk.Transform = initial
    for name in linear_names:
        transform = linear.run(name, metric_name, moving, transform if name == "rigid" else as_affine(transform))
    choice, moving_for_metric = None, moving
    if metric == "auto":
        choice = choose_metric(fixed_node, moving_node, fixed, moving, transform, fixed_mask_image,
                               moving_mask_image)
        if choice.metric == "mean_squares":
            metric_name = "mean_squares"
            moving_for_metric = fitted_moving(fixed, moving, transform, fixed_mask_image, moving_mask_image)
            transform = linear.run(linear_names[-1], metric_name, moving_for_metric,
                                   stage_start(as_affine(transform), linear_names[-1]), note="auto refine")
        else:
            linear.skip()
    found = as_affine(transform)
    # the check the optimisation did not see: the same stage from a start a few degrees and mm away (the two
    # finest levels: a perturbation this small needs no coarse capture, and coarse levels of a masked image are thin)
    last = linear_names[-1]
    again = linear.run(last, metric_name, moving_for_metric, stage_start(perturbed(found), last),
                       note="consistency check", keep_note=False, may_fail=True, levels=min(levels, 2))
    disagreement = corner_disagreement_mm(fixed, found, as_affine(again)) if again is not None else float("inf")
    tolerance = consistency_tolerance_mm(fixed, moving)
    sharpness = alignment_sharpness(fixed, moving, found)
    warnings = []
    if not sharpness >= MIN_SHARPNESS:
        warnings.append(
            f"unreliable: the edges of the two images line up no better at this result than 2 voxels beside it "
            f"(gradient alignment sharpness {sharpness:.2f} < {MIN_SHARPNESS}); the images may not show the same "
            "anatomy — check the fusion view, add masks or landmarks")
    if disagreement > tolerance:
        warnings.append(
            f"unreliable: re-optimising from {PERTURB_DEG:.0f}° / {PERTURB_MM:.0f} mm away lands "
            f"{disagreement:.1f} mm (corners) from this result (tolerance {tolerance:.1f} mm); the images may not "
            "show the same anatomy or overlap too little — check the fusion view, add masks or landmarks")
    matrix_ras = _linear_to_ras(found)
    transform, coefficients, iterations, notes = found, None, linear.iterations, linear.notes
    final_metric = linear.final_metric

    if kind == "bspline":
        warp_progress = scaled(progress, 1.0 - 1.0 / shares, 1.0)
        if metric_name == "mean_squares":  # same contrast: ours (aiportal/register/bspline.py), ahead of elastix
            warp = fast_bspline_stage(fixed, moving_for_metric, found, fixed_mask_image, warp_progress, cancel)
            warnings.extend(warp.warnings)
        else:  # different contrasts: ITK's Mattes mutual information B-spline
            warp = bspline_stage(fixed, moving_for_metric, found, metric_name, levels, fixed_mask_image,
                                 moving_mask_image, warp_progress, cancel)
            warnings.append(
                "unreliable: the B-spline for different contrasts (Mattes mutual information) failed its check: on "
                "a CT warped by a known 11 mm field it ended 15 mm off (bench/bench_registration_bspline.py, "
                "ct-6mm-inverted) — check the fusion view, or use affine")
        iterations += warp.iterations
        notes.append(warp.note)
        final_metric, coefficients = warp.final_metric, warp.coefficients
        transform = sitk.CompositeTransform([found, warp.transform])  # ITK applies the last one first
    elapsed_s = time.perf_counter() - start
    tre = unregistered_tre = None
    if landmarks is not None:
        tre, unregistered_tre = transform_tre(transform, landmarks), transform_tre(sitk.Transform(), landmarks)
        if tre.mean_mm > unregistered_tre.mean_mm:
            warnings.append(f"landmarks: mean TRE {tre.mean_mm:.1f} mm after registration, worse than "
                            f"{unregistered_tre.mean_mm:.1f} mm before — the result is wrong or the landmarks are")
    progress(1.0, "registration done")
    return RegistrationResult(
        kind=kind, metric=metric_name, matrix_ras=matrix_ras, itk_transform=transform,
        final_metric=float(final_metric), iterations=iterations, elapsed_s=elapsed_s,
        bspline_coefficients=coefficients, notes=notes, tre=tre, unregistered_tre=unregistered_tre,
        initialization=initialization, metric_choice=choice, consistency_mm=disagreement,
        consistency_tolerance_mm=tolerance, sharpness=sharpness, warnings=warnings,
    )


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
