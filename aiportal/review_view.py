"""What a review panel shows, GUI-free: the AI segments with their review state, and one line per decision.

The desktop module's Review section (AISegmentPortal/AISegmentPortalLib/review_panel.py) shows these;
the decisions themselves are :func:`aiportal.review.review_segment`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiportal.review import ReviewOutcome, review_state
from aiportal.segmentation import segment_ids


@dataclass(frozen=True)
class ReviewRow:
    segment_id: str
    name: str
    state: str  # suggested, accepted, modified or rejected


def review_rows(segmentation_node) -> list[ReviewRow]:
    """The segments a model made, in segmentation order; hand-drawn segments have nothing to review."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    rows = []
    for segment_id in segment_ids(segmentation_node):
        state = review_state(segmentation_node, segment_id)
        if state is not None:
            rows.append(ReviewRow(segment_id, segmentation.GetSegment(segment_id).GetName(), state))
    return rows


def pending_text(rows: list[ReviewRow]) -> str:
    pending = sum(1 for row in rows if row.state == "suggested")
    if not rows:
        return "No AI segments to review."
    if not pending:
        return "Every AI segment is reviewed."
    return f"{pending} of {len(rows)} AI segments wait for your decision."


def outcome_text(outcome: ReviewOutcome) -> str:
    """``Liver: modified (Dice with the AI draft 0.934, volume +4.2 %: 512.0 -> 533.5 ml)``."""
    record = outcome.record
    line = f"{outcome.segment_name}: {outcome.decision}"
    if outcome.removed:
        line += " (removed from the segmentation; the audit record stays)"
    if record.get("draft_dice") is None:
        return line + "; no AI draft was kept for it, so no Dice."
    change = record.get("volume_change")
    change_text = "n/a (empty draft)" if change is None else f"{100 * change:+.1f} %"
    return (f"{line} — Dice with the AI draft {record['draft_dice']:.3f}, volume {change_text}: "
            f"{record['draft_ml']:.1f} -> {record['final_ml']:.1f} ml")
