"""RT Structure Set (RTSTRUCT) from a segmentation: planar contours that reference the source CT/MR.

Radiotherapy planning systems read structure sets, not SEG. Each non-empty segment becomes one ROI
(name, display colour, generation algorithm, RT ROI Interpreted Type and the segment's SNOMED type in
RT ROI Identification Code Sequence) with one CLOSED_PLANAR contour per outline on every acquired slice
it crosses, in LPS mm, each referencing its slice (Contour Image Sequence). The outlines lie on the voxel
boundary (:mod:`aiportal.rt.contours`), holes are contours inside contours, so filling them back gives
the segment exactly. The structure set references its Frame of Reference, study, series and every
source image (RT Referenced Study/Series), and carries the source's patient and study modules.

:func:`plan_rois` reads the scene; :func:`aiportal.rt.encode.encode_rtstruct` (pure numpy / pydicom)
writes the file.
"""

from __future__ import annotations

import time

import numpy as np

from aiportal import terminology
from aiportal.errors import InputError
from aiportal.export.dicom_source import ExportSource
from aiportal.io.geometry import labels_to_acquired
from aiportal.provenance import Provenance, read_tag
from aiportal.rt.encode import RT_STRUCTURE_SET_STORAGE, RoiSpec, RtStructExport, encode_rtstruct, rois_from_labels
from aiportal.segmentation import (
    REVIEW_TAG,
    label_boxes,
    segment_mask,
    segment_number_map,
    segment_voxel_counts,
)
from aiportal.segmentation import segment_ids as all_segment_ids

__all__ = ["RT_STRUCTURE_SET_STORAGE", "RoiSpec", "RtStructExport", "encode_rtstruct", "plan_rois", "rois_from_labels",
           "write_rtstruct"]


def plan_rois(segmentation_node, volume_node, source: ExportSource,
              segment_ids: list[str] | None = None) -> tuple[list[RoiSpec], list[str]]:
    """The ROIs of the segments (default: all) on the source's acquired slices, and the names of the empty ones."""
    if source.volume_node_id != volume_node.GetID():  # the source was checked against another volume
        raise ValueError(f"source describes volume {source.volume_node_id}, not {volume_node.GetID()}")
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segment_ids) if segment_ids is not None else all_segment_ids(segmentation_node)
    voxels = segment_voxel_counts(segmentation_node)
    empty = [segmentation.GetSegment(i).GetName() for i in ids if not voxels.get(i)]
    kept = [i for i in ids if voxels.get(i)]
    if not kept:
        raise InputError(f"Segmentation {segmentation_node.GetName()} has no voxels in the chosen segments",
                         "segment something first, or choose non-empty segments")
    first = source.datasets[0]

    def on_acquired(array: np.ndarray) -> np.ndarray:  # tilted / uneven series: back onto the acquired slices
        if source.regular_grid is None:
            return array
        return labels_to_acquired(array, source.regular_grid, int(first.Rows), int(first.Columns))

    numbers = segment_number_map(segmentation_node, volume_node, kept)
    if numbers is not None:
        numbers = on_acquired(numbers)
        boxes = label_boxes(numbers)
        masks = [(numbers[boxes[n]] == n + 1, boxes[n]) if n < len(boxes) and boxes[n] else None
                 for n in range(len(kept))]
    else:  # overlapping segments: one mask each, kept as its bounding box
        masks = []
        for segment_id in kept:
            mask = on_acquired(segment_mask(segmentation_node, segment_id, volume_node).astype(np.uint8))
            box = label_boxes(mask)
            masks.append((mask[box[0]] > 0, box[0]) if box and box[0] else None)
    rois = []
    for segment_id, placed in zip(kept, masks, strict=True):
        segment = segmentation.GetSegment(segment_id)
        if placed is None:  # every voxel fell between acquired slices
            empty.append(segment.GetName())
            continue
        provenance = Provenance.of_segment(segment)
        rois.append(RoiSpec(
            name=segment.GetName(),
            color=tuple(int(round(channel * 255)) for channel in segment.GetColor()),
            mask=placed[0],
            origin=tuple(s.start for s in placed[1]),
            codes=terminology.deserialize(segment.GetTerminology()),
            algorithm=("MANUAL" if provenance is None else
                       "SEMIAUTOMATIC" if read_tag(segment, REVIEW_TAG) == "modified" else "AUTOMATIC"),
            description=(f"{provenance.model_id} {provenance.model_version}".strip() if provenance else ""),
        ))
    return rois, empty


def write_rtstruct(segmentation_node, volume_node, source: ExportSource, path, **options) -> RtStructExport:
    """Write the segments (default: all) as an RT Structure Set that references ``source``'s images."""
    started = time.monotonic()
    rois, empty = plan_rois(segmentation_node, volume_node, source, options.pop("segment_ids", None))
    written = encode_rtstruct(rois, source.datasets, path, **options)
    written.empty_segments = empty
    written.seconds = time.monotonic() - started
    return written
