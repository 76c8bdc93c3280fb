"""Longitudinal follow-up on real lesions: the pyradiomics brain lesion against itself shifted, grown,
shrunk, gone and with a new lesion (known changes), and the MONAI brain MR pair after registration."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from test_recist import _pyradiomics, _segmentation

from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume
from aiportal.measure.followup import (
    FRAGMENT,
    GONE,
    MATCHED,
    NEW,
    add_follow_up_table,
    compare_studies,
    write_follow_up,
)
from aiportal.measure.recist import measure_lesions, measure_segment
from aiportal.measure.response import Response, classify_response
from aiportal.segmentation import segment_ids

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def brain(shared_data):
    from aiportal.runtime import build_headless_runtime

    runtime = build_headless_runtime()
    image, both, _, _ = _pyradiomics(runtime, shared_data, "brain1")
    # brain1's label holds two separate lesions (3524 and 613 voxels): these tests follow the larger one
    # alone; test_each_lesion_of_a_segment_is_followed_on_its_own follows both
    labels, _ = ndimage.label(both, np.ones((3, 3, 3), bool))
    mask = labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1
    prior = _segmentation(runtime, mask, image)
    yield runtime, image, mask, prior
    runtime.scene.Clear(1)


def _current(runtime, image, *masks):
    node = _segmentation(runtime, sum((m.astype(np.uint8) * (n + 1) for n, m in enumerate(masks))), image)
    return node, [node.GetSegmentation().GetSegment(s).GetName() for s in segment_ids(node)]


def test_shifted_lesion_matches_unchanged_and_a_new_lesion_is_progression(brain, tmp_path):
    runtime, image, mask, prior = brain
    shift = (0, 3, 4)  # (k, j, i) voxels
    moved = np.roll(mask, shift, axis=(0, 1, 2))
    new = np.zeros_like(mask)
    new[10, 30:45, 30:45] = True  # far from the lesion
    current, names = _current(runtime, image, moved, new)
    follow_up = compare_studies(prior, image, current, image)

    by_status = {change.status: change for change in follow_up.lesions}
    assert sorted(by_status) == [MATCHED, NEW] and len(follow_up.lesions) == 2
    matched = by_status[MATCHED]
    assert matched.current.segment_name == names[0] and by_status[NEW].current.segment_name == names[1]
    spacing = np.linalg.norm(ijk_to_ras_matrix(image)[:3, :3], axis=0)
    assert matched.centroid_distance_mm == pytest.approx(math.hypot(3 * spacing[1], 4 * spacing[0]), abs=1e-6)
    assert matched.dice == pytest.approx(2 * (mask & moved).sum() / (mask.sum() + moved.sum()), abs=1e-12)
    row = matched.row()
    for key in ("long_axis_change_mm", "short_axis_change_mm", "reported_change_mm", "volume_change_ml"):
        assert row[key] == pytest.approx(0.0, abs=1e-9), key  # a rigid whole-voxel shift changes no size
    assert follow_up.assessment.response is Response.PD and follow_up.assessment.explanation == "new lesion(s)"
    assert follow_up.new_lesions == [names[1]]
    assert follow_up.current_sum_mm == pytest.approx(follow_up.baseline_sum_mm, abs=1e-9)  # new lesion not summed

    written = write_follow_up(follow_up, tmp_path)
    document = json.loads(written[0].read_text())
    assert document["response"]["response"] == "PD" and document["response"]["new_lesions"] == [names[1]]
    rows = list(csv.DictReader(written[1].open()))
    assert [r["status"] for r in rows] == [MATCHED, NEW]
    assert float(rows[0]["current_long_axis_mm"]) == pytest.approx(matched.current.long_axis_mm, abs=1e-3)
    assert rows[1]["prior_long_axis_mm"] == ""  # a new lesion has no prior size

    table = add_follow_up_table(runtime.scene, follow_up)
    assert table.GetNumberOfRows() == 2 and table.GetAttribute("AIPortal.Response") == "PD"
    assert table.GetCellText(0, table.GetColumnIndex("status")) == MATCHED
    assert table.GetTable().GetColumnByName("prior_long_axis_mm").GetValue(0) == follow_up.baseline_sum_mm
    assert table.GetColumnUnitLabel("volume_change_ml") == "ml"


@pytest.mark.parametrize(("radius", "expected"), [(-2, Response.SD), (4, Response.SD), (8, Response.PR)])
def test_grown_and_shrunk_lesion_change_and_response(brain, radius, expected):
    """Dilated (radius < 0) or eroded in-plane by |radius| voxels: changes equal the two measurements and
    the response follows the RECIST rules on the sums (8 voxels: -55 %, PR)."""
    runtime, image, mask, prior = brain
    operation = ndimage.binary_dilation if radius < 0 else ndimage.binary_erosion
    changed = operation(mask, IN_PLANE, iterations=abs(radius))
    current, _ = _current(runtime, image, changed)
    follow_up = compare_studies(prior, image, current, image)
    change, *pieces = follow_up.lesions
    assert change.status == MATCHED
    # eroded by 8 voxels the lesion breaks into two (371 and 21 voxels): the small one is a fragment, not new
    assert [piece.status for piece in pieces] == ([FRAGMENT] if radius == 8 else [])
    before = measure_segment(prior, segment_ids(prior)[0], image)
    after = measure_lesions(current, segment_ids(current)[0], image).measurements
    row = change.row()
    assert row["long_axis_change_mm"] == pytest.approx(after[0].long_axis_mm - before.long_axis_mm, abs=1e-9)
    assert row["volume_change_pct"] == pytest.approx(
        100 * (after[0].volume_ml / before.volume_ml - 1), abs=1e-9)
    now = sum(m.long_axis_mm for m in after)  # RECIST 1.1: a fragmented lesion's pieces are summed
    assert follow_up.current_sum_mm == pytest.approx(now, abs=1e-9)
    assert follow_up.assessment == classify_response(before.long_axis_mm, before.long_axis_mm, now)
    assert follow_up.assessment.response is expected, follow_up.assessment.explanation


def test_lesion_gone_is_complete_response_and_nadir_is_used(brain):
    runtime, image, mask, prior = brain
    current = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "after treatment")
    current.GetSegmentation().AddEmptySegment("lesion", "lesion")
    follow_up = compare_studies(prior, image, current, image)
    (change,) = follow_up.lesions
    assert change.status == GONE and change.row()["current_long_axis_mm"] == 0.0
    assert follow_up.assessment.response is Response.CR
    assert any("empty current segment" in note for note in follow_up.notes)

    # regrown to the baseline size after a nadir of half of it: +100 % from the nadir = PD
    again, _ = _current(runtime, image, mask)
    follow_up = compare_studies(prior, image, again, image, nadir_sum_mm=follow_up.baseline_sum_mm / 2)
    assert follow_up.assessment.response is Response.PD


def test_monai_pair_is_matched_after_registration(runtime, shared_data):
    """The MONAI brain MR and its moved, reoriented 4 mm copy: registered (AIRegister), the labels match."""
    from aiportal.register import register_volumes

    folder = shared_data / "monai-ct-dicom"

    def study(name):
        volume = load_volume(folder / f"{name}.nii", runtime).node
        label = load_volume(folder / f"{name}_label.nii.gz", runtime).node
        # the label is a thin curved strip on one slice (tubular: 78 x 6.6 mm, refused by RECIST); grown into
        # a compact blob it stands for a lesion
        mask = ndimage.binary_dilation(array_from_volume(label) > 0, iterations=3)
        runtime.scene.RemoveNode(label)
        return volume, _segmentation(runtime, mask, volume)

    prior_volume, prior = study("anatomical")
    current_volume, current = study("reoriented_anat_moved")
    registration = register_volumes(current_volume, prior_volume)  # fixed = current, moving = prior
    follow_up = compare_studies(prior, prior_volume, current, current_volume, registration=registration)
    (change,) = follow_up.lesions
    assert change.status == MATCHED and change.dice > 0
    assert follow_up.assessment.response in (Response.SD, Response.PR, Response.PD)
    assert follow_up.assessment == classify_response(change.prior.reported_mm, change.prior.reported_mm,
                                                     change.current.reported_mm)
    # far apart without registration and a small match distance: nothing matches, and the note says why
    assert follow_up.notes == [] or "register them first" not in " ".join(follow_up.notes)
