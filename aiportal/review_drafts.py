"""The AI's draft of each segment, kept so that governance can measure how much readers change it.

When a result is shown (:func:`aiportal.review.remember_suggestions`) every suggested segment's
voxels are saved as the *draft*: a bit-packed mask of its bounding box and the box's
index-to-world matrix, under ``AIPORTAL_DRAFTS_DIR`` (default: ``drafts/`` beside the audit log),
one file per run and segment. At the reader's decision the final segment is compared with it:
Dice and the volume change go into the audit's review record. A draft is never deleted by a
decision, a rejection included: it is what the model said.

Masks only, no image and no patient data; the file name is a digest of the run id and segment id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import vtk

from aiportal.segmentation import image_scalars_kji, vtk_matrix_to_array


def drafts_dir() -> Path:
    from aiportal.settings import Settings

    configured = os.environ.get("AIPORTAL_DRAFTS_DIR")
    return Path(configured) if configured else Settings.from_environment().audit_log.with_name("drafts")


def draft_path(run_id: str, segment_id: str) -> Path:
    name = hashlib.sha256(f"{run_id}\0{segment_id}".encode()).hexdigest()[:32]
    return drafts_dir() / f"{name}.npz"


def segment_box(segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(the segment's mask over its bounding box in (k, j, i), the box's (i, j, k) -> world matrix)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    values = image_scalars_kji(layer)
    matrix = vtk.vtkMatrix4x4()
    if layer is not None:
        layer.GetImageToWorldMatrix(matrix)
    to_world = vtk_matrix_to_array(matrix)
    if values is None or segment is None:
        return np.zeros((0, 0, 0), bool), to_world
    mask = values == segment.GetLabelValue()
    hits = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(hit.size == 0 for hit in hits):
        return np.zeros((0, 0, 0), bool), to_world
    box = tuple(slice(int(hit[0]), int(hit[-1]) + 1) for hit in hits)
    start_ijk = np.array(layer.GetExtent()[0::2]) + np.array([hit[0] for hit in hits][::-1])
    shift = np.eye(4)
    shift[:3, 3] = start_ijk
    return np.ascontiguousarray(mask[box]), to_world @ shift


def save_draft(segmentation_node, segment_id: str, run_id: str) -> Path:
    mask, to_world = segment_box(segmentation_node, segment_id)
    path = draft_path(run_id, segment_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(temporary, bits=np.packbits(mask), shape=np.array(mask.shape), to_world=to_world)
    temporary.replace(path)
    return path


@dataclass(frozen=True)
class DraftComparison:
    dice: float  # 1.0: the reader kept the draft's voxels exactly
    draft_ml: float
    final_ml: float

    @property
    def volume_change(self) -> float | None:
        """(final − draft) / draft; None for an empty draft."""
        return (self.final_ml - self.draft_ml) / self.draft_ml if self.draft_ml else None

    def audit_fields(self) -> dict[str, float | None]:
        change = self.volume_change
        return {"draft_dice": round(self.dice, 5), "draft_ml": round(self.draft_ml, 4),
                "final_ml": round(self.final_ml, 4), "volume_change": None if change is None else round(change, 5)}


def _voxel_ml(to_world: np.ndarray) -> float:
    return abs(float(np.linalg.det(to_world[:3, :3]))) / 1000.0


def compare_with_draft(segmentation_node, segment_id: str, run_id: str) -> DraftComparison | None:
    """Dice and volumes of the segment now against its saved draft; None when no draft was kept."""
    path = draft_path(run_id, segment_id)
    if not path.is_file():
        return None
    with np.load(path) as stored:
        shape = tuple(int(n) for n in stored["shape"])
        draft = np.unpackbits(stored["bits"], count=int(np.prod(shape))).astype(bool).reshape(shape)
        draft_to_world = stored["to_world"]
    final, final_to_world = segment_box(segmentation_node, segment_id)
    draft_ml, final_ml = draft.sum() * _voxel_ml(draft_to_world), final.sum() * _voxel_ml(final_to_world)
    overlap_ml = 0.0
    if draft.any() and final.any():
        kji = np.argwhere(final)
        ijk1 = np.column_stack([kji[:, ::-1], np.ones(len(kji))])
        # each final voxel's centre in the draft's box (exact on the same grid, nearest voxel otherwise)
        in_draft = np.rint((np.linalg.inv(draft_to_world) @ final_to_world @ ijk1.T)[:3].T).astype(np.int64)
        inside = np.all((in_draft >= 0) & (in_draft < np.array(shape[::-1])), axis=1)
        hits = in_draft[inside]
        overlap_ml = draft[hits[:, 2], hits[:, 1], hits[:, 0]].sum() * _voxel_ml(final_to_world)
    total = draft_ml + final_ml
    return DraftComparison(2 * overlap_ml / total if total else 1.0, draft_ml, final_ml)
