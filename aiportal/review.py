"""The reader's review of AI segments: accept, edit then accept ("modified"), or reject — per segment.

Every AI segment starts as a suggestion (review tag ``suggested``, set when the model's label map is
imported). A decision sets the segment's review tag and appends a ``review`` record to the audit
trail with the run id from the segment's provenance; every face (desktop, CLI, browser) calls
:func:`review_segment`, so the rules live here once:

- accepting a segment whose voxels differ from what the model suggested is recorded as
  ``modified`` (the DICOM SEG then says SEMIAUTOMATIC), because the reader's edit is part of it;
- a rejected segment leaves the segmentation (it must not reach exports), its record stays;
- segments no model made have nothing to review.

What the model suggested is remembered as a digest of the segment's voxels
(:func:`remember_suggestions`, called when the result is shown), stored as a segment tag so it
travels with the segment into seg.nrrd; the voxels themselves are kept as the draft
(:mod:`aiportal.review_drafts`), so that each decision's record carries the Dice and the volume
change between the AI's draft and the reader's final segment.
"""

from __future__ import annotations

import getpass
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import vtk

from aiportal.audit import REVIEW_DECISIONS, AuditLog, record_review
from aiportal.errors import InputError
from aiportal.provenance import TAG_PREFIX, Provenance, read_tag
from aiportal.review_drafts import compare_with_draft, save_draft
from aiportal.segmentation import REVIEW_TAG, image_scalars_kji, segment_ids, vtk_matrix_to_array

SUGGESTED_DIGEST_TAG = TAG_PREFIX + "suggested_digest"


def content_digest(segmentation_node, segment_id: str) -> str:
    """SHA-256 of a segment's voxels and where they lie; unchanged by edits of other segments."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    values = image_scalars_kji(layer)
    digest = hashlib.sha256()
    if values is None or segment is None:
        return digest.hexdigest()
    mask = values == segment.GetLabelValue()
    hits = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(hit.size == 0 for hit in hits):
        return digest.hexdigest()  # empty segment
    box = tuple(slice(int(hit[0]), int(hit[-1]) + 1) for hit in hits)
    cropped = np.ascontiguousarray(mask[box])
    # the box's first voxel in world coordinates: a layer whose extent grows keeps the same digest
    extent_start = np.array(layer.GetExtent()[0::2]) + np.array([hit[0] for hit in hits][::-1])
    matrix = vtk.vtkMatrix4x4()
    layer.GetImageToWorldMatrix(matrix)
    corner = vtk_matrix_to_array(matrix) @ np.append(extent_start, 1.0)
    digest.update(np.round(corner[:3], 3).tobytes())
    digest.update(np.array(cropped.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(cropped).tobytes())
    return digest.hexdigest()


def review_state(segmentation_node, segment_id: str) -> str | None:
    """``suggested``, ``accepted``, ``modified``, ``rejected``; None for a segment no model made."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return read_tag(segment, REVIEW_TAG) if segment is not None else None


def remember_suggestions(segmentation_node) -> int:
    """Store the digest of every suggested segment that lacks one; returns how many were stored."""
    segmentation = segmentation_node.GetSegmentation()
    stored = 0
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        if read_tag(segment, REVIEW_TAG) == "suggested" and read_tag(segment, SUGGESTED_DIGEST_TAG) is None:
            segment.SetTag(SUGGESTED_DIGEST_TAG, content_digest(segmentation_node, segment_id))
            if (provenance := Provenance.of_segment(segment)) is not None:
                save_draft(segmentation_node, segment_id, provenance.run_id)  # for Dice / volume change later
            stored += 1
    return stored


def is_modified(segmentation_node, segment_id: str) -> bool | None:
    """Whether the reader changed the segment since the model suggested it; None when unknown."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    suggested = read_tag(segment, SUGGESTED_DIGEST_TAG) if segment is not None else None
    if suggested is None:
        return None
    return content_digest(segmentation_node, segment_id) != suggested


def pending_reviews(segmentation_node) -> list[str]:
    """Ids of the AI segments still waiting for the reader's decision."""
    return [s for s in segment_ids(segmentation_node) if review_state(segmentation_node, s) == "suggested"]


@dataclass(frozen=True)
class ReviewOutcome:
    segment_id: str
    segment_name: str
    decision: str  # what was recorded: accepted, modified or rejected
    record: dict[str, Any]  # the audit record
    removed: bool  # a rejected segment left the segmentation


def review_segment(
    segmentation_node,
    segment_id: str,
    decision: str,
    *,
    log: AuditLog,
    user: str | None = None,
    remove_rejected: bool = True,
) -> ReviewOutcome:
    """Record the reader's decision on one AI segment: audit record, review tag, and removal on reject.

    ``decision`` is ``accepted``, ``modified`` or ``rejected``; ``accepted`` is recorded as
    ``modified`` when the voxels differ from the model's suggestion.
    """
    if decision not in REVIEW_DECISIONS:
        raise InputError(f"Unknown review decision {decision!r}", f"use one of: {', '.join(REVIEW_DECISIONS)}")
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"Segment {segment_id!r} is not in {segmentation_node.GetName()}",
                         "pick a segment of the shown segmentation")
    provenance = Provenance.of_segment(segment)
    if provenance is None or read_tag(segment, REVIEW_TAG) is None:
        raise InputError(f"Segment {segment.GetName()!r} was not made by a model: there is nothing to review",
                         "review only AI segments")
    changed = is_modified(segmentation_node, segment_id)
    if decision == "accepted" and changed:
        decision = "modified"
    against_draft = compare_with_draft(segmentation_node, segment_id, provenance.run_id)
    record = record_review(
        log, provenance.run_id, segment.GetName(), decision, user or getpass.getuser(),
        segment_id=segment_id, model_id=provenance.model_id, edited=bool(changed),
        content_sha256=content_digest(segmentation_node, segment_id),
        **(against_draft.audit_fields() if against_draft else {}),
    )
    segment.SetTag(REVIEW_TAG, decision)
    name = segment.GetName()
    removed = decision == "rejected" and remove_rejected
    if removed:
        segmentation.RemoveSegment(segment_id)
    return ReviewOutcome(segment_id, name, decision, record, removed)
