"""An RT Structure Set into a Slicer segmentation node on its reference CT/MR, so a plan made elsewhere
can be edited, measured and exported again. Each ROI becomes a segment with its name, colour and (when
the structure set codes it) its SNOMED type; overlapping ROIs go to separate layers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiportal import terminology
from aiportal.errors import InputError
from aiportal.io.volumes import ijk_to_ras_matrix
from aiportal.models.catalog import TISSUE, Code, LabelSpec
from aiportal.rt.reader import StructureSetRead, rasterize_structure_set, read_structure_set
from aiportal.runtime import SlicerRuntime, get_runtime
from aiportal.segmentation import ijk_to_ras_vtk, import_layer, shape_kji

ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
_TARGETS = {"GTV", "CTV", "PTV", "ITV"}


@dataclass
class ImportedStructureSet:
    segmentation_node: object
    structure_set: StructureSetRead
    warnings: list[str]


def _label(roi, value: int) -> LabelSpec:
    """The segment's codes: the ROI's SNOMED type when coded; else a generic one the name stays beside."""
    category = MORPHOLOGICALLY_ALTERED if roi.interpreted_type in _TARGETS else ANATOMICAL_STRUCTURE
    return LabelSpec(value=value, name=roi.name, category=category, type=roi.type_code or TISSUE, color=roi.color)


def _layers(masks: list[np.ndarray]) -> list[list[int]]:
    """ROI indices grouped so that no two in a group overlap (first fit, in ROI order)."""
    groups: list[tuple[np.ndarray, list[int]]] = []
    for index, mask in enumerate(masks):
        for union, members in groups:
            if not np.any(union & mask):
                union |= mask
                members.append(index)
                break
        else:
            groups.append((mask.copy(), [index]))
    return [members for _, members in groups]


def import_rtstruct(path: Path, volume_node, *, frame_of_reference_uid: str | None = None,
                    referenced_series_uid: str | None = None, runtime: SlicerRuntime | None = None
                    ) -> ImportedStructureSet:
    """Load ``path`` (an RTSTRUCT) as a new segmentation on ``volume_node``'s grid."""
    runtime = runtime or get_runtime()
    path = Path(path)
    dataset = read_structure_set(path)
    read = rasterize_structure_set(dataset, ijk_to_ras_matrix(volume_node), shape_kji(volume_node),
                                   frame_of_reference_uid, where=path.name)
    if not read.rois:
        raise InputError(f"{path.name} has no closed planar contours", "give a structure set with contoured ROIs")
    warnings = []
    series = read.referenced_series_uids
    if referenced_series_uid and series and referenced_series_uid not in series:
        warnings.append(f"{path.name} references series {read.referenced_series_uids[0]}, not the reference series "
                        "given; its contours lie on that series' slices, so they were placed on it")
    if read.skipped:
        warnings.append(f"ROIs without closed planar contours left out: {', '.join(read.skipped)}")
    node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", read.label or path.stem)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    grid = ijk_to_ras_vtk(volume_node)
    segmentation = node.GetSegmentation()
    masks = [roi.mask for roi in read.rois]
    for members in _layers(masks):
        layer = np.zeros(masks[0].shape, dtype=np.uint8 if len(read.rois) < 255 else np.uint16)
        for index in members:
            layer[masks[index]] = index + 1
        for segment_id in import_layer(node, layer, grid):
            segment = segmentation.GetSegment(segment_id)
            label = _label(read.rois[int(segment.GetLabelValue()) - 1], int(segment.GetLabelValue()))
            segment.SetName(label.name)
            segment.SetColor(*(channel / 255.0 for channel in label.color))
            segment.SetTerminology(terminology.serialize(label))
    return ImportedStructureSet(node, read, warnings)
