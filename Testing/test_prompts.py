"""Box prompts: a Markups ROI or RAS corners become the voxel box the model receives."""

from __future__ import annotations

import numpy as np
import pytest

from aiportal.errors import InputError
from aiportal.prompts import box_from_ras_corners, box_from_roi_node, check_box


@pytest.fixture
def ct(runtime, shared_data):
    from aiportal.io.volumes import load_volume

    return load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime=runtime).node


def _ras(node, ijk):
    from aiportal.io.volumes import ijk_to_ras_matrix

    return (ijk_to_ras_matrix(node) @ np.array([*ijk, 1.0]))[:3]


def test_roi_around_known_voxels_gives_exactly_those_voxels(runtime, ct):
    # an ROI whose faces lie half a voxel outside voxels (10..40, 20..60, 5..9) must select exactly them
    a, b = _ras(ct, (9.5, 19.5, 4.5)), _ras(ct, (40.5, 60.5, 9.5))
    roi = runtime.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion ROI")
    roi.SetCenter(*((a + b) / 2))
    roi.SetSize(*np.abs(b - a))
    assert box_from_roi_node(ct, roi) == [10, 20, 5, 40, 60, 9]


def test_a_box_drawn_on_one_slice_stays_on_that_slice(ct):
    a, b = _ras(ct, (3, 4, 7)), _ras(ct, (30, 40, 7))
    assert box_from_ras_corners(ct, a, b) == [3, 4, 7, 30, 40, 7]


def test_boxes_outside_the_volume_are_refused_with_the_fix(ct):
    far = _ras(ct, (-100, -100, -100))
    with pytest.raises(InputError, match="lies outside example_ct_sm"):
        box_from_ras_corners(ct, far, far + 1)
    with pytest.raises(InputError, match=r"is not inside CT \(i, j, k up to"):
        check_box([0, 0, 0, 10_000, 5, 5], (30, 100, 100), "CT")
    with pytest.raises(InputError, match="needs 6 voxel indices"):
        check_box([1, 2, 3], (30, 100, 100), "CT")
