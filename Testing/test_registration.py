"""Registration on real brain MR: known rigid motion recovered, multi-modal MI, transform nodes and files, errors.

Ground truth (nibabel 5.4.2 ``tests/test_processing.py::test_against_spm_resample``): the moved image
is ``anatomical.nii``'s voxels with affine ``E @ A`` where ``E = from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])``;
``reoriented_anat_moved.nii`` is that moved image resampled by SPM to 4 mm voxels, so the motion is in its
voxels (``resampled_anat_moved.nii`` is on a 3-slice functional grid: too thin for 3D registration).
nibabel's ``euler2mat(z, y, x)`` returns ``Rx(x) @ Ry(y) @ Rz(z)``: z=0.1, y=0.2, x=0.3 rad. A point ``p`` of
the anatomical image lies at ``E p`` in the moved one, so the moving → fixed transform is ``inverse(E)``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from nibabel.affines import from_matvec
from nibabel.eulerangles import euler2mat

from aiportal.errors import CancelledError, InputError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, volume_node_from_array
from aiportal.progress import CancelToken
from aiportal.register import (
    apply_to_scene,
    load_transform,
    register_volumes,
    resample,
    save_transform,
    transform_matrix,
)
from aiportal.register.registration import FIXED_REFERENCE, MOVING_REFERENCE
from aiportal.segmentation import ijk_to_ras_vtk, oriented_image, segment_mask

KNOWN_MOTION = from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])  # moving world = E @ fixed world
#: a second known motion, for the synthetic pairs
SYNTHETIC_MOTION = from_matvec(euler2mat(-0.1, 0.15, 0.05), [-6, 5, 4])


def rotation_error_deg(estimated: np.ndarray, true: np.ndarray) -> float:
    """Angle of the residual rotation R_est^T R_true."""
    residual = estimated[:3, :3].T @ true[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1.0, 1.0))))


def translation_error_mm(estimated: np.ndarray, true: np.ndarray) -> float:
    return float(np.linalg.norm(estimated[:3, 3] - true[:3, 3]))


@pytest.fixture
def anatomical(runtime, shared_data):
    return load_volume(shared_data / "nibabel-moved" / "anatomical.nii", runtime).node


def moved_copy(runtime, fixed, motion: np.ndarray, voxels: np.ndarray | None = None, name: str = "moved"):
    """The fixed voxels (or ``voxels``) placed at ``motion @ IJK→RAS``: a known moving → fixed of inverse(motion)."""
    values = array_from_volume(fixed).astype(np.float32) if voxels is None else voxels
    return volume_node_from_array(runtime.scene, values, motion @ ijk_to_ras_matrix(fixed), name)


def test_rigid_recovers_known_nibabel_motion(runtime, shared_data, anatomical):
    moving = load_volume(shared_data / "nibabel-moved" / "reoriented_anat_moved.nii", runtime).node
    reports = []
    result = register_volumes(anatomical, moving, kind="rigid", metric="mean_squares",
                              progress=lambda fraction, stage: reports.append((fraction, stage)))
    true = np.linalg.inv(KNOWN_MOTION)
    assert rotation_error_deg(result.matrix_ras, true) < 0.5  # measured 0.19°
    assert translation_error_mm(result.matrix_ras, true) < 0.5  # measured 0.26 mm
    # the other reading of euler2mat's angle order is far off: the convention above is the right one
    other = np.linalg.inv(from_matvec(euler2mat(0.3, 0.2, 0.1), [3, 4, 5]))
    assert rotation_error_deg(result.matrix_ras, other) > 5
    assert result.kind == "rigid" and result.iterations > 0 and np.isfinite(result.final_metric)
    assert {stage for _, stage in reports} >= {"rigid level 1/3", "rigid level 3/3"}
    assert all(0.0 <= fraction <= 1.0 for fraction, _ in reports) and reports[-1][0] == 1.0


def test_mutual_information_aligns_a_t2_like_contrast(runtime, anatomical):
    t1 = array_from_volume(anatomical).astype(np.float32)
    scaled = (t1 - t1.min()) / (t1.max() - t1.min())
    # non-monotonic: background stays dark while tissue contrast is inverted, as from T1 to T2
    t2_like = np.where(scaled > 0.15, 1.2 - scaled, 2 * scaled) * 1000
    moving = moved_copy(runtime, anatomical, SYNTHETIC_MOTION, t2_like.astype(np.float32), "T2-like")
    result = register_volumes(anatomical, moving, kind="rigid")  # auto → Mattes mutual information
    assert result.metric == "mutual_information"
    true = np.linalg.inv(SYNTHETIC_MOTION)
    assert rotation_error_deg(result.matrix_ras, true) < 1.5  # measured 0.90°
    assert translation_error_mm(result.matrix_ras, true) < 1.5  # measured 0.60 mm


def test_linear_transform_node_and_files_reload_identically(runtime, anatomical, tmp_path):
    moving = moved_copy(runtime, anatomical, SYNTHETIC_MOTION)
    mask = array_from_volume(anatomical) > np.percentile(array_from_volume(anatomical), 50)
    result = register_volumes(anatomical, moving, kind="affine", metric="mean_squares", fixed_mask=mask,
                              initialization="moments")
    assert np.allclose(result.matrix_ras, np.linalg.inv(SYNTHETIC_MOTION), atol=0.05)
    node = apply_to_scene(runtime, result, anatomical, moving)
    assert node.GetClassName() == "vtkMRMLLinearTransformNode"
    assert node.GetNodeReference(FIXED_REFERENCE) is anatomical
    assert node.GetNodeReference(MOVING_REFERENCE) is moving
    assert moving.GetParentTransformNode() is node
    assert np.allclose(transform_matrix(node), result.matrix_ras)
    for suffix in (".h5", ".tfm"):
        path = save_transform(node, tmp_path / f"affine{suffix}")
        reloaded = load_transform(runtime, path)
        assert np.allclose(transform_matrix(reloaded), result.matrix_ras, atol=1e-9)
    registered = resample(runtime, result, anatomical, moving)
    assert np.corrcoef(array_from_volume(registered).ravel(), array_from_volume(anatomical).ravel())[0, 1] > 0.99


def test_bspline_node_matches_the_optimised_transform_and_reloads(runtime, anatomical, tmp_path):
    moving = moved_copy(runtime, anatomical, SYNTHETIC_MOTION)
    result = register_volumes(anatomical, moving, kind="bspline", metric="mean_squares", levels=1)
    assert result.bspline_coefficients is not None
    assert max(np.abs(c).max() for c in result.bspline_coefficients) < 0.5  # a rigid pair needs (almost) no warp
    node = apply_to_scene(runtime, result, anatomical, moving)
    assert node.GetClassName() == "vtkMRMLBSplineTransformNode"
    reloaded = load_transform(runtime, save_transform(node, tmp_path / "warp.h5"), "vtkMRMLBSplineTransformNode")
    flip = np.array([-1.0, -1.0, 1.0])
    for point in ([0.0, 0.0, 0.0], [10.0, -20.0, 5.0], [-20.0, 15.0, -10.0]):
        expected = flip * np.array(result.itk_transform.TransformPoint(tuple(flip * point)))  # fixed → moving
        for transform_node in (node, reloaded):
            mapped = [0.0, 0.0, 0.0]
            transform_node.GetTransformFromParent().TransformPoint(point, mapped)
            assert np.allclose(mapped, expected, atol=1e-6)
        assert np.allclose(expected, (SYNTHETIC_MOTION @ [*point, 1.0])[:3], atol=0.5)


def test_2d_input_is_refused(runtime, anatomical):
    one_slice = array_from_volume(anatomical)[:1].astype(np.float32)
    flat = volume_node_from_array(runtime.scene, one_slice, ijk_to_ras_matrix(anatomical), "slice")
    with pytest.raises(InputError, match="is 2D"):
        register_volumes(anatomical, flat)


def test_empty_and_constant_images_are_refused(runtime, anatomical):
    empty = runtime.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="moving volume has no image data"):
        register_volumes(anatomical, empty)
    zeros = volume_node_from_array(runtime.scene, np.zeros((5, 6, 7), np.float32), np.eye(4), "zeros")
    with pytest.raises(InputError, match="is constant"):
        register_volumes(zeros, anatomical)


def test_volumes_that_do_not_overlap_are_refused(runtime, anatomical):
    far_away = moved_copy(runtime, anatomical, from_matvec(np.eye(3), [500, 0, 0]))
    with pytest.raises(InputError, match="do not overlap"):
        register_volumes(anatomical, far_away, initialization="none")


def test_mask_of_the_wrong_shape_is_refused(runtime, anatomical):
    with pytest.raises(InputError, match="fixed mask has shape"):
        register_volumes(anatomical, anatomical, fixed_mask=np.ones((2, 3, 4), bool))


@pytest.mark.parametrize("cancelled_stage", ["affine", "bspline"])  # gradient descent stops; LBFGSB is aborted
def test_cancel_stops_promptly_and_leaves_nothing_in_the_scene(runtime, anatomical, cancelled_stage):
    moving = moved_copy(runtime, anatomical, SYNTHETIC_MOTION)
    nodes_before = runtime.scene.GetNumberOfNodes()
    token = CancelToken()

    after_cancel: list[str] = []

    def cancel_in_stage(fraction: float, stage: str) -> None:
        if token.cancelled:
            after_cancel.append(stage)
        elif stage.startswith(cancelled_stage):
            token.cancel()

    with pytest.raises(CancelledError):
        register_volumes(anatomical, moving, kind="bspline", metric="mean_squares", progress=cancel_in_stage,
                         cancel=token)
    # promptly: the run stops inside the stage it was cancelled in (no later stage or warp level starts);
    # judged by what it reported, not by the clock (no timing assertions)
    first_level = {"affine": "affine", "bspline": "bspline level 1/"}[cancelled_stage]
    assert all(stage.startswith(first_level) for stage in after_cancel), after_cancel
    assert runtime.scene.GetNumberOfNodes() == nodes_before


def test_fixed_mask_from_a_segment_keeps_the_known_motion(runtime, shared_data, anatomical):
    voxels = array_from_volume(anatomical)
    head = voxels > np.percentile(voxels, 40)
    segmentation = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "head")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(anatomical)
    segment_id = segmentation.AddSegmentFromBinaryLabelmapRepresentation(
        oriented_image(head.astype(np.uint8), ijk_to_ras_vtk(anatomical)), "head", (1.0, 0.0, 0.0)
    )
    mask = segment_mask(segmentation, segment_id, anatomical)
    assert mask.shape == voxels.shape and mask.sum() == head.sum()
    moving = load_volume(shared_data / "nibabel-moved" / "reoriented_anat_moved.nii", runtime).node
    result = register_volumes(anatomical, moving, metric="mean_squares", fixed_mask=mask)
    true = np.linalg.inv(KNOWN_MOTION)
    # fewer samples (the tissue only, 60% of a 2 mm image) cost a little precision
    assert rotation_error_deg(result.matrix_ras, true) < 1.0  # measured 0.48°
    assert translation_error_mm(result.matrix_ras, true) < 1.0  # measured 0.74 mm


def test_register_command_writes_a_reloadable_transform_and_the_resampled_volume(runtime, shared_data, tmp_path):
    import json
    import subprocess
    import sys

    fixed = shared_data / "nibabel-moved" / "anatomical.nii"
    moving = shared_data / "nibabel-moved" / "reoriented_anat_moved.nii"
    out = tmp_path / "reg"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(fixed), str(moving), "--type", "rigid",
                           "--metric", "mean_squares", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    matrix = transform_matrix(load_transform(runtime, out / "transform.h5"))
    true = np.linalg.inv(KNOWN_MOTION)
    assert rotation_error_deg(matrix, true) < 0.5 and translation_error_mm(matrix, true) < 0.5
    record = json.loads((out / "registration.json").read_text())
    assert np.allclose(record["moving_to_fixed_ras"], matrix, atol=1e-6)
    registered = load_volume(out / "moving_registered.nrrd", runtime).node
    assert np.allclose(ijk_to_ras_matrix(registered), ijk_to_ras_matrix(load_volume(fixed, runtime).node), atol=1e-4)

    again = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(fixed), str(moving), "--out",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # nothing replaced
    import SimpleITK as sitk

    flat_path = tmp_path / "slice.nrrd"  # one slice of the real image (Slicer's writer refuses single slices)
    sitk.WriteImage(sitk.ReadImage(str(fixed))[:, :, 12:13], str(flat_path))
    flat = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(fixed), str(flat_path),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert flat.returncode == 1 and "aiportal: error:" in flat.stderr and "2D" in flat.stderr
    assert not (tmp_path / "x").exists()


def test_prior_segmentation_propagates_onto_the_current_scan(runtime, anatomical):
    from aiportal.models.backend import LabelMapResult
    from aiportal.models.catalog import ANATOMICAL_STRUCTURE, TISSUE, Code, LabelSpec
    from aiportal.provenance import Provenance, now_iso
    from aiportal.register import propagate_segmentation
    from aiportal.segmentation import import_label_map, label_value, segment_ids

    voxels = array_from_volume(anatomical).astype(np.float32)
    prior_scan = moved_copy(runtime, anatomical, SYNTHETIC_MOTION, name="prior")  # same voxels, moved in space
    head, bright = voxels > np.percentile(voxels, 40), voxels > np.percentile(voxels, 85)  # overlapping segments
    labels = (LabelSpec(1, "head", ANATOMICAL_STRUCTURE, Code("SCT", "69536005", "Head"), color=(200, 150, 100)),
              LabelSpec(2, "bright", TISSUE, Code("SCT", "85756007", "Tissue"), color=(20, 120, 250), layer=1))
    provenance = Provenance("prior-model", "1", "none", {}, "cpu", now_iso(), now_iso())
    prior = import_label_map(LabelMapResult(layers=[head.astype(np.uint8), bright.astype(np.uint8) * 2]), labels,
                             prior_scan, provenance, runtime=runtime)

    result = register_volumes(anatomical, prior_scan, kind="rigid", metric="mean_squares")
    current = propagate_segmentation(runtime, result, prior, anatomical, prior_scan)

    segmentation = current.GetSegmentation()
    by_name = {segmentation.GetSegment(s).GetName(): s for s in segment_ids(current)}
    assert set(by_name) == {"head", "bright"}
    for name, truth in (("head", head), ("bright", bright)):
        mask = segment_mask(current, by_name[name], anatomical)
        dice = 2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum())
        assert dice > 0.9, (name, dice)  # the same voxels, found again on the current grid
        segment = segmentation.GetSegment(by_name[name])
        assert Provenance.of_segment(segment) == provenance and label_value(segment) in (1, 2)
    assert segmentation.GetSegment(by_name["bright"]).GetColor() == pytest.approx((20 / 255, 120 / 255, 250 / 255))
    overlap = segment_mask(current, by_name["head"], anatomical) & segment_mask(current, by_name["bright"], anatomical)
    assert overlap.sum() > 0.9 * segment_mask(current, by_name["bright"], anatomical).sum()  # overlaps survive


def test_fusion_modes_set_every_slice_view(runtime, anatomical):
    from aiportal.register import checkerboard, show_fusion

    moving = moved_copy(runtime, anatomical, SYNTHETIC_MOTION)
    result = register_volumes(anatomical, moving, kind="rigid", metric="mean_squares")
    views = [runtime.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]  # as Red/Yellow/Green

    show_fusion(runtime, result, anatomical, moving, mode="fade", opacity=0.3)
    for view in views:
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (anatomical.GetID(), moving.GetID())
        assert view.GetForegroundOpacity() == pytest.approx(0.3) and view.GetCompositing() == view.Alpha

    show_fusion(runtime, result, anatomical, moving, mode="difference")
    assert all(view.GetCompositing() == view.Subtract and view.GetForegroundOpacity() == 1.0 for view in views)

    board = show_fusion(runtime, result, anatomical, moving, mode="checkerboard", square_mm=8.0)
    assert all(view.GetBackgroundVolumeID() == board.GetID() and not view.GetForegroundVolumeID() for view in views)
    fixed, moved = array_from_volume(anatomical), array_from_volume(resample(runtime, result, anatomical, moving))
    cubes = array_from_volume(board)
    assert np.array_equal(cubes, checkerboard(fixed, moved, np.linalg.norm(ijk_to_ras_matrix(anatomical)[:3, :3],
                                                                             axis=0)[::-1], 8.0))
    assert np.array_equal(cubes[0, 0, 0], fixed[0, 0, 0]) and (cubes == fixed).mean() > 0.4
    slice_mm = np.linalg.norm(ijk_to_ras_matrix(anatomical)[:3, 2])
    k = next(k for k in range(cubes.shape[0]) if 8.0 <= k * slice_mm < 16.0)  # the second cube along k
    assert np.array_equal(cubes[k, :1, :1], moved[k, :1, :1].astype(cubes.dtype))
    assert not np.array_equal(cubes, fixed) and not np.array_equal(cubes, moved)
    with pytest.raises(InputError, match="fusion mode"):
        show_fusion(runtime, result, anatomical, moving, mode="swipe")


def test_registration_job_runs_in_the_background_and_cancel_adds_nothing(runtime, shared_data, anatomical):
    """What the AIRegister panel uses: start / poll / cancel / finish, the scene touched only by finish()."""

    from aiportal.errors import CancelledError
    from aiportal.register.job import RegistrationJob

    moving = load_volume(shared_data / "nibabel-moved" / "reoriented_anat_moved.nii", runtime).node
    transforms_before = runtime.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode")
    cancelled = RegistrationJob(anatomical, moving, kind="bspline")
    cancelled.start()
    while cancelled.poll().fraction < 0.05 and cancelled.poll().state == "running":
        time.sleep(0.01)
    cancelled.cancel()
    assert cancelled.wait(60).state == "cancelled"
    with pytest.raises(CancelledError):
        cancelled.finish(runtime)
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == transforms_before

    job = RegistrationJob(anatomical, moving, kind="rigid", metric="mean_squares")
    job.start()
    stages = set()
    while (status := job.poll()).state == "running":
        stages.add(status.stage)
        time.sleep(0.01)
    assert status.state == "done" and stages
    transform_node, result = job.finish(runtime, fusion_mode="difference")
    assert moving.GetParentTransformNode() is transform_node
    assert runtime.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == transforms_before + 1
    assert rotation_error_deg(result.matrix_ras, np.linalg.inv(KNOWN_MOTION)) < 0.5  # same answer as in the foreground
