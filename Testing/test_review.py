"""The reader's review of AI segments on a real CT: decisions, edits detected, audit records."""

from __future__ import annotations

import numpy as np
import pytest

from aiportal.audit import AuditLog, ai_run_fields
from aiportal.errors import InputError
from aiportal.io.volumes import load_volume
from aiportal.review import (
    content_digest,
    is_modified,
    pending_reviews,
    remember_suggestions,
    review_segment,
    review_state,
)
from aiportal.segment import SegmentationJob
from aiportal.segmentation import segment_ids, segment_mask, segment_voxel_counts


@pytest.fixture
def ai_result(runtime, shared_data):
    volume = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    result = SegmentationJob(volume, "classic-ct", runtime=runtime).run()
    return volume, result


def _id_of(node, name: str) -> str:
    segmentation = node.GetSegmentation()
    return next(s for s in segment_ids(node) if segmentation.GetSegment(s).GetName() == name)


def _grow(node, segment_id: str, volume) -> None:
    """Add a block of voxels to a segment the way the segment editor does (a reader's edit)."""
    import slicer

    from aiportal.segmentation import ijk_to_ras_vtk, oriented_image

    mask = segment_mask(node, segment_id, volume)
    k, j, i = np.argwhere(mask)[0]
    mask[max(k - 2, 0):k + 2, max(j - 6, 0):j + 6, max(i - 6, 0):i + 6] = True
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(mask.astype(np.uint8), ijk_to_ras_vtk(volume)), node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def test_accept_modify_reject_are_tagged_and_audited(ai_result, tmp_path):
    volume, result = ai_result
    node = result.segmentation_node
    log = AuditLog(tmp_path / "audit.jsonl")
    assert remember_suggestions(node) == len(segment_ids(node))
    assert remember_suggestions(node) == 0  # the model's version is kept, never overwritten

    bone, lung, body = _id_of(node, "Bone"), _id_of(node, "Left lung"), _id_of(node, "Body")
    assert is_modified(node, bone) is False
    before = segment_voxel_counts(node)[lung]
    _grow(node, lung, volume)
    assert segment_voxel_counts(node)[lung] > before
    assert is_modified(node, lung) is True
    assert is_modified(node, bone) is False  # editing one segment leaves the others' digests alone

    accepted = review_segment(node, bone, "accepted", log=log, user="reader")
    modified = review_segment(node, lung, "accepted", log=log, user="reader")
    rejected = review_segment(node, body, "rejected", log=log, user="reader")

    assert (accepted.decision, modified.decision, rejected.decision) == ("accepted", "modified", "rejected")
    assert review_state(node, bone) == "accepted" and review_state(node, lung) == "modified"
    assert rejected.removed and body not in segment_ids(node)
    assert set(pending_reviews(node)) == set(segment_ids(node)) - {bone, lung}

    records = log.records()
    assert [r["decision"] for r in records] == ["accepted", "modified", "rejected"]
    assert {r["run_id"] for r in records} == {result.provenance.run_id}
    assert [r["segment"] for r in records] == ["Bone", "Left lung", "Body"]
    assert records[1]["edited"] is True and records[0]["edited"] is False
    assert records[1]["content_sha256"] == content_digest(node, lung)
    assert log.verify() == []


def test_refuses_unknown_decisions_and_segments_no_model_made(ai_result, tmp_path):
    _volume, result = ai_result
    node = result.segmentation_node
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(InputError, match="Unknown review decision"):
        review_segment(node, segment_ids(node)[0], "maybe", log=log)
    manual = node.GetSegmentation().AddEmptySegment("", "drawn by hand")
    with pytest.raises(InputError, match="not made by a model"):
        review_segment(node, manual, "accepted", log=log)
    with pytest.raises(InputError, match="is not in"):
        review_segment(node, "no-such-segment", "accepted", log=log)
    assert log.records() == []


def test_ai_run_fields_name_the_run(ai_result):
    _volume, result = ai_result
    fields = ai_run_fields(result, "example_ct_sm.nii.gz")
    assert fields["run_id"] == result.provenance.run_id
    assert fields["model_id"] == "classic-ct" and fields["study_uid"] == ""


def test_the_draft_is_kept_and_each_decision_records_dice_and_volume_change(ai_result, tmp_path, monkeypatch):
    from aiportal.review_drafts import draft_path

    monkeypatch.setenv("AIPORTAL_DRAFTS_DIR", str(tmp_path / "drafts"))
    volume, result = ai_result
    node, run_id = result.segmentation_node, result.provenance.run_id
    remember_suggestions(node)
    assert len(list((tmp_path / "drafts").glob("*.npz"))) == len(segment_ids(node))
    bone, lung, body = _id_of(node, "Bone"), _id_of(node, "Left lung"), _id_of(node, "Body")
    voxel_ml = float(np.prod(volume.GetSpacing())) / 1000
    before = segment_voxel_counts(node)[lung]
    _grow(node, lung, volume)
    after = segment_voxel_counts(node)[lung]
    log = AuditLog(tmp_path / "audit.jsonl")
    accepted, modified, rejected = (review_segment(node, bone, "accepted", log=log, user="reader").record,
                                    review_segment(node, lung, "accepted", log=log, user="reader").record,
                                    review_segment(node, body, "rejected", log=log, user="reader").record)
    assert accepted["draft_dice"] == 1.0 and accepted["volume_change"] == 0.0
    assert modified["decision"] == "modified"
    assert modified["draft_ml"] == pytest.approx(before * voxel_ml, rel=1e-4)
    assert modified["final_ml"] == pytest.approx(after * voxel_ml, rel=1e-4)
    assert modified["volume_change"] == pytest.approx((after - before) / before, rel=1e-3) and after > before
    assert modified["draft_dice"] == pytest.approx(2 * before / (before + after), rel=1e-4)  # grown, none removed
    assert rejected["draft_dice"] == 1.0 and draft_path(run_id, body).is_file()  # the draft outlives a rejection
