"""Landmark TRE on elastix's 3DCT_lung follow-up pair, registered by the lung masks.

The data (SuperElastix/elastix ``Testing``, see ../shared/data/README.md) hold the baseline and follow-up
lung masks, 10 corresponding landmark pairs (voxel indices on the 1.366 x 1.366 x 2.5 mm mask grids),
a half-resolution baseline CT, and elastix's regression result ``Baselines/3DCT_lung.mha``: the follow-up
CT resampled onto the baseline grid by elastix's test ``3DCT_lung.example`` (affine initial transform +
NC B-spline, ``elastix/Testing/CMakeLists.txt``). The follow-up CT and elastix's transform files are
NOT in the data, so:

- **ours** registers what there is of the follow-up: the lung masks. Each becomes a clipped signed distance
  map (the image), and the dilated mask restricts the metric (``fixed_mask``/``moving_mask``); affine, mean
  squares, initialised by moments. TRE is exact: baseline landmarks mapped by our transform against the
  follow-up landmarks. Measured 5.3 mm mean (8.9 max), from 34.9 mm in scanner coordinates.
  A B-spline on masks is worse (6.7 mm, and 15x slower): with no intensity inside the lung the warp slides
  along the boundary and bends the interior.
- **elastix's** TRE cannot be computed from its result image (that needs its transform or the follow-up CT).
  What can be measured is how far its result image still is from the baseline CT at the landmarks
  (:func:`residual_shift_mm`, checked here on a known 3 mm shift): 0.2 mm mean. That is an image residual on
  a 2.7 x 2.7 x 5 mm baseline; elastix's landmark TRE also carries the landmarks' own voxel rounding (up to
  0.7 x 0.7 x 1.25 mm per point), so it is roughly 1 mm, far below what mask-only registration can reach.

So "ours <= elastix" cannot be asserted honestly on this data: elastix saw the follow-up CT's vessels, we
see two lung outlines. The test asserts what is true and can fail: our mask-driven TRE against a bound
just above the measurement and against the best rigid fit of the landmarks themselves, and elastix's
stored result against the baseline. The like-for-like comparison (elastix defaults on the same masks,
exact TRE for both) is in bench/bench_registration.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from aiportal.errors import InputError
from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, volume_node_from_array
from aiportal.register import register_volumes
from aiportal.register.landmarks import (
    LandmarkPairs,
    read_elastix_points,
    read_landmark_pairs,
    residual_shift_mm,
    target_registration_error,
    transform_tre,
)

DISTANCE_CLIP_MM = 20.0  # lungs are >100 mm wide: 20 mm of distance on each side of the pleura drives the fit
FLIP = np.array([-1.0, -1.0, 1.0])


@pytest.fixture
def lung(shared_data):
    return shared_data / "elastix-lung" / "Testing"


@pytest.fixture
def masks(runtime, lung):
    data = lung / "Data"
    return (load_volume(data / "3DCT_lung_baseline_mask.mha", runtime).node,
            load_volume(data / "3DCT_lung_followup_mask.mha", runtime).node)


@pytest.fixture
def pairs(lung, masks) -> LandmarkPairs:
    return read_landmark_pairs(lung / "Data" / "3DCT_lung_baseline.txt", lung / "Data" / "3DCT_lung_followup.txt",
                               *masks)


def rigid_fit_residual_mm(source: np.ndarray, target: np.ndarray) -> float:
    """Mean residual of the best rigid map source → target (Kabsch): a floor for any rigid method."""
    source_c, target_c = source - source.mean(0), target - target.mean(0)
    u, _, vt = np.linalg.svd(source_c.T @ target_c)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return float(np.linalg.norm(source_c @ rotation.T - target_c, axis=1).mean())


def distance_map(runtime, mask_node):
    """The lung mask as a clipped signed distance map (mm, lung positive, all values >= 0 for moments)."""
    mask = array_from_volume(mask_node) > 0
    spacing = np.linalg.norm(ijk_to_ras_matrix(mask_node)[:3, :3], axis=0)[::-1]  # (k, j, i) order
    signed = ndimage.distance_transform_edt(mask, sampling=spacing) - ndimage.distance_transform_edt(~mask,
                                                                                                     sampling=spacing)
    values = (np.clip(signed, -DISTANCE_CLIP_MM, DISTANCE_CLIP_MM) + DISTANCE_CLIP_MM).astype(np.float32)
    return volume_node_from_array(runtime.scene, values, ijk_to_ras_matrix(mask_node), f"{mask_node.GetName()} map")


def test_index_landmarks_are_read_on_their_own_volume_geometry(lung, masks, pairs):
    assert pairs.fixed_ras.shape == (10, 3)
    for node, points, name in ((masks[0], pairs.fixed_ras, "3DCT_lung_baseline"),
                               (masks[1], pairs.moving_ras, "3DCT_lung_followup")):
        # independent path: ITK's index → physical (LPS) on the same file
        image = sitk.ReadImage(str(lung / "Data" / f"{name}_mask.mha"))
        indices = read_elastix_points(lung / "Data" / f"{name}.txt").values
        expected = np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in indices]) * FLIP
        assert np.allclose(points, expected, atol=1e-3)
        # every landmark is inside its own lung mask
        ijk = np.round((np.c_[points, np.ones(10)] @ np.linalg.inv(ijk_to_ras_matrix(node)).T)[:, :3]).astype(int)
        assert array_from_volume(node)[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()


def test_tre_of_a_known_motion_of_real_landmarks(pairs):
    fixed = pairs.fixed_ras
    angle = 0.05
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    shift = np.array([4.0, -3.0, 12.0])
    moved = LandmarkPairs(fixed, fixed @ rotation.T + shift)  # moving = R p + t (RAS)

    exact = sitk.AffineTransform(3)  # the same motion in ITK's fixed LPS → moving LPS
    flip = np.diag(FLIP)
    exact.SetMatrix((flip @ rotation @ flip).ravel().tolist())
    exact.SetTranslation((flip @ shift).tolist())
    assert transform_tre(exact, moved).max_mm < 1e-6

    translation_only = sitk.TranslationTransform(3, (flip @ shift).tolist())
    tre = transform_tre(translation_only, moved)
    expected = np.linalg.norm(fixed @ rotation.T - fixed, axis=1)  # what the missing rotation leaves, per point
    assert np.allclose(tre.per_point_mm, expected, atol=1e-6)
    assert tre.mean_mm == pytest.approx(expected.mean()) and tre.max_mm == pytest.approx(expected.max())
    assert tre.as_dict()["points"] == 10 and tre.as_dict()["per_point_mm"][0] == round(expected[0], 2)
    assert target_registration_error(fixed + [3.0, 4.0, 0.0], fixed).per_point_mm == pytest.approx([5.0] * 10)


def test_landmark_files_that_do_not_pair_up_are_refused(tmp_path, lung, masks):
    short = tmp_path / "short.txt"
    short.write_text("index\n2\n1 2 3\n4 5 6\n")
    with pytest.raises(InputError, match="do not pair up"):
        read_landmark_pairs(lung / "Data" / "3DCT_lung_baseline.txt", short, *masks)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("index\n3\n1 2 3\n")
    with pytest.raises(InputError, match="announces 3 points"):
        read_elastix_points(wrong)
    (tmp_path / "none.txt").write_text("1 2 3\n")
    with pytest.raises(InputError, match="'index' or 'point'"):
        read_elastix_points(tmp_path / "none.txt")


def test_lung_masks_register_to_a_known_tre_and_elastix_result_lines_up(runtime, lung, masks, pairs):
    baseline_mask, followup_mask = masks
    result = register_volumes(
        distance_map(runtime, baseline_mask), distance_map(runtime, followup_mask), kind="affine",
        metric="mean_squares", initialization="moments", landmarks=pairs,
        fixed_mask=ndimage.binary_dilation(array_from_volume(baseline_mask) > 0, iterations=3),
        moving_mask=ndimage.binary_dilation(array_from_volume(followup_mask) > 0, iterations=3),
    )
    assert result.tre is not None and result.unregistered_tre is not None
    assert result.unregistered_tre.mean_mm == pytest.approx(34.86, abs=0.01)  # scanner coordinates: table moved
    assert len(result.tre.per_point_mm) == 10
    assert result.tre.mean_mm < 6.5  # measured 5.3 mm (max 8.9)
    assert result.tre.max_mm < 11.0
    # the rigid part of the breathing motion alone leaves 4.2 mm; masks must get near that floor
    assert result.tre.mean_mm < rigid_fit_residual_mm(pairs.fixed_ras, pairs.moving_ras) + 2.0

    # elastix's stored result (the follow-up CT after its registration) against the baseline CT
    geometry = sitk.ReadImage(str(lung / "Data" / "3DCT_lung_baseline_mask.mha"))
    points_lps = pairs.fixed_ras * FLIP
    baseline_ct = sitk.ReadImage(str(lung / "Data" / "3DCT_lung_baseline_small.mha"))
    elastix_result = sitk.ReadImage(str(lung / "Baselines" / "3DCT_lung.mha"))
    assert elastix_result.GetSize() == geometry.GetSize()  # on the baseline grid, as elastix writes it
    residual = residual_shift_mm(baseline_ct, elastix_result, points_lps)
    assert residual.mean() < 1.0  # measured 0.19 mm: elastix's result lines up with the baseline
    moved = sitk.Image(elastix_result)
    moved.SetOrigin(tuple(np.array(elastix_result.GetOrigin()) + [2.0, -2.0, 1.0]))  # a known 3 mm misalignment
    assert residual_shift_mm(baseline_ct, moved, points_lps).mean() == pytest.approx(3.0, abs=0.3)  # measured 2.95


def test_register_command_reports_landmark_tre(lung, tmp_path):
    """`aiportal register --landmarks`: TRE before and after, per point, in registration.json."""
    import json
    import subprocess
    import sys

    data = lung / "Data"
    out = tmp_path / "reg"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(data / "3DCT_lung_baseline_mask.mha"),
                           str(data / "3DCT_lung_followup_mask.mha"), "--type", "rigid", "--metric", "mean_squares",
                           "--landmarks", str(data / "3DCT_lung_baseline.txt"), str(data / "3DCT_lung_followup.txt"),
                           "--no-resample", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "registration.json").read_text())
    assert len(report["tre"]["per_point_mm"]) == 10
    assert report["unregistered_tre"]["mean_mm"] == pytest.approx(34.86, abs=0.01)  # the table moved 35 mm
    assert report["tre"]["mean_mm"] < report["unregistered_tre"]["mean_mm"] / 3
    assert "landmark TRE: mean" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(data / "3DCT_lung_baseline_mask.mha"),
                          str(data / "3DCT_lung_followup_mask.mha"), "--landmarks",
                          str(data / "3DCT_lung_baseline.txt"), str(tmp_path / "missing.txt"),
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.txt" in bad.stderr and not (tmp_path / "bad").exists()
