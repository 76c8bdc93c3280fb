"""B-spline registration on a real CT warped by a known smooth field (up to ~11 mm), and the folding warning.

Case: ``totalseg/example_ct.nii.gz`` shrunk to 6 mm voxels (what the bench calls ct-6mm); the moving image is
its copy warped by :func:`aiportal.register.validation.known_warp`. The bench (bench/bench_registration_bspline.py)
runs the same case, 3 mm and a head CT beside elastix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from aiportal.io.volumes import load_volume
from aiportal.register import register_volumes
from aiportal.register.bspline import fast_bspline_stage
from aiportal.register.validation import body_points, displacement, known_warp, true_fixed_to_moving


def _ct(shared_data, shrink: int = 2) -> sitk.Image:
    image = sitk.ReadImage(str(shared_data / "totalseg" / "example_ct.nii.gz"), sitk.sitkFloat32)
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, 1.5 * shrink), [shrink] * 3)


def test_bspline_recovers_a_known_warp_of_a_real_ct(runtime, shared_data, tmp_path):
    fixed = _ct(shared_data)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(known_warp(fixed), str(tmp_path / "moving.nii.gz"))
    fixed_node, moving_node = (load_volume(tmp_path / f"{n}.nii.gz", runtime).node for n in ("fixed", "moving"))
    result = register_volumes(fixed_node, moving_node, kind="bspline")  # every default, as users run it
    points = body_points(fixed, -500.0, 2000)
    truth = true_fixed_to_moving(points, fixed)
    assert np.linalg.norm(displacement(truth, fixed), axis=1).max() >= 10.0  # the warp is large enough to matter
    mapped = np.array([result.itk_transform.TransformPoint(tuple(p)) for p in points])
    errors = np.linalg.norm(mapped - truth, axis=1)
    unregistered = np.linalg.norm(points - truth, axis=1)
    assert np.median(errors) <= 1.0, (np.median(errors), np.median(unregistered))
    assert result.metric == "mean_squares" and "bspline (ours)" in result.notes[-1]
    assert not any("folds" in w for w in result.warnings)


def test_bspline_warns_when_the_warp_folds(shared_data):
    # impossible for a smooth one-to-one warp: the moving CT is the fixed one with its halves swapped
    fixed = _ct(shared_data, shrink=4)  # 12 mm voxels: folding shows at any resolution
    array = sitk.GetArrayFromImage(fixed)
    half = array.shape[2] // 2
    moving = sitk.GetImageFromArray(np.concatenate([array[:, :, half:], array[:, :, :half]], axis=2))
    moving.CopyInformation(fixed)
    warp = fast_bspline_stage(fixed, moving, sitk.AffineTransform(3), None, lambda *_: None, None)
    assert any("folds" in w and "Jacobian" in w for w in warp.warnings), warp.warnings
