"""Segmentation nodes: a model's label map in, seg.nrrd and label maps out.

A label map + its label table becomes a ``vtkMRMLSegmentationNode`` under the source study in
the subject hierarchy; every segment gets its name, colour, SNOMED terminology, label value,
review state and provenance (see :mod:`aiportal.provenance`). The same functions serve every face.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from aiportal import terminology
from aiportal.errors import InputError
from aiportal.io.storage import write_node
from aiportal.models.backend import LabelMapResult
from aiportal.models.catalog import LabelSpec
from aiportal.provenance import TAG_PREFIX, Provenance, read_tag
from aiportal.runtime import SlicerRuntime, get_runtime

LABEL_VALUE_TAG = TAG_PREFIX + "label_value"
CONFIDENCE_TAG = TAG_PREFIX + "confidence"
REVIEW_TAG = TAG_PREFIX + "review"

_Logic = slicer.vtkSlicerSegmentationsModuleLogic


def ijk_to_ras_vtk(volume_node) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def oriented_image(array_kji: np.ndarray, ijk_to_ras: vtk.vtkMatrix4x4) -> slicer.vtkOrientedImageData:
    """A ``vtkOrientedImageData`` holding a copy of a (k, j, i) array on the given grid."""
    image = slicer.vtkOrientedImageData()
    k, j, i = array_kji.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(numpy_support.get_vtk_array_type(array_kji.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(array_kji.shape)[:] = array_kji
    image.SetImageToWorldMatrix(ijk_to_ras)
    return image


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def import_label_map(
    result: LabelMapResult,
    labels: Sequence[LabelSpec],
    reference_volume,
    provenance: Provenance,
    *,
    segmentation_node=None,
    name: str | None = None,
    runtime: SlicerRuntime | None = None,
):
    """Fill a segmentation node (new, or emptied) from a model's label map layers.

    Segments are created only for labels that occur; each carries terminology, colour, label
    value, confidence (when the model gave one), review state "suggested" and provenance.
    """
    runtime = runtime or get_runtime()
    if segmentation_node is None:
        segmentation_node = runtime.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", name or f"{reference_volume.GetName()} {provenance.model_id}"
        )
    else:
        segmentation_node.GetSegmentation().RemoveAllSegments()
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    by_value = {label.value: label for label in labels}
    grid = ijk_to_ras_vtk(reference_volume)
    shape = shape_kji(reference_volume)
    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    try:
        for layer in result.layers:
            if layer.shape != shape:
                raise ValueError(f"label map shape {layer.shape} differs from the volume's {shape}")
            if not layer.any():
                continue
            for segment_id in import_layer(segmentation_node, layer, grid):
                segment = segmentation.GetSegment(segment_id)
                label = by_value.get(segment.GetLabelValue())
                if label is None:
                    raise ValueError(f"label value {segment.GetLabelValue()} is not in the model's label table")
                _describe_segment(segment, label, provenance, result.confidences.get(label.value))
    finally:
        segmentation_node.EndModify(was_modifying)
    _place_next_to(runtime, segmentation_node, reference_volume)
    return segmentation_node


def import_layer(segmentation_node, layer: np.ndarray, grid: vtk.vtkMatrix4x4) -> list[str]:
    """Import one label-map layer (on the IJK→RAS ``grid``) into the node; the new segments' ids, one per label."""
    before = set(segment_ids(segmentation_node))
    if not _Logic.ImportLabelmapToSegmentationNode(oriented_image(layer, grid), segmentation_node, "", ""):
        raise RuntimeError("Slicer could not import the label map into the segmentation")
    return [segment_id for segment_id in segment_ids(segmentation_node) if segment_id not in before]


def shape_kji(volume_node) -> tuple[int, int, int]:
    """The (k, j, i) shape of a volume node's voxel array."""
    i, j, k = volume_node.GetImageData().GetDimensions()
    return (k, j, i)


def _describe_segment(segment, label: LabelSpec, provenance: Provenance, confidence: float | None) -> None:
    segment.SetName(label.name)
    segment.SetColor(*(channel / 255.0 for channel in label.color))
    segment.SetTerminology(terminology.serialize(label))
    segment.SetTag(LABEL_VALUE_TAG, str(label.value))
    segment.SetTag(REVIEW_TAG, "suggested")
    if confidence is not None:
        segment.SetTag(CONFIDENCE_TAG, f"{confidence:.4f}")
    provenance.tag(segment)


def _place_next_to(runtime: SlicerRuntime, node, sibling) -> None:
    """Put ``node`` under the same subject hierarchy parent (the study) as ``sibling``."""
    shnode = runtime.shnode
    sibling_item = shnode.GetItemByDataNode(sibling)
    if not sibling_item:
        return
    parent = shnode.GetItemParent(sibling_item)
    item = shnode.GetItemByDataNode(node)
    if item:  # inside Slicer the subject hierarchy plugins made one already
        shnode.SetItemParent(item, parent)
    else:
        shnode.CreateItem(parent, node)


def label_value(segment) -> int | None:
    text = read_tag(segment, LABEL_VALUE_TAG)
    return int(text) if text else None


def export_label_map(segmentation_node, reference_volume) -> np.ndarray:
    """The segmentation as one (k, j, i) label map on the reference volume's grid.

    Segments with a label value tag keep it; others get values after the highest one. Where
    segments overlap, the later segment in the list wins (Slicer's own export rule).
    """
    ids = segment_ids(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    values = [label_value(segmentation.GetSegment(segment_id)) for segment_id in ids]
    next_free = max([v for v in values if v] + [0]) + 1
    shape = shape_kji(reference_volume)
    label_map = np.zeros(shape, dtype=np.uint8 if next_free + len(ids) < 256 else np.uint16)
    grid = vtk_matrix_to_array(ijk_to_ras_vtk(reference_volume))
    layers: dict[str, GridLayer | None] = {}
    for segment_id, value in zip(ids, values, strict=True):
        if value is None:
            value, next_free = next_free, next_free + 1
        image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        address = image.GetAddressAsString("") if image is not None else ""
        if address not in layers:
            layers[address] = layer_on_grid(image, grid) if image is not None else None
        layer = layers[address]
        if layer is None:  # a layer off the volume grid: let Slicer resample this segment
            label_map[segment_mask(segmentation_node, segment_id, reference_volume)] = value
            continue
        placed = _placement(layer, shape)
        if placed is not None:
            inside, target = placed
            label_map[target][layer.array[inside] == segmentation.GetSegment(segment_id).GetLabelValue()] = value
    return label_map


def segment_mask(segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """A segment as a boolean (k, j, i) array on the reference volume's grid."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap_node = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not _Logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, reference_volume):
            raise RuntimeError(f"could not export segment {segment_id}")
        image = labelmap_node.GetImageData()
        i, j, k = image.GetDimensions()
        return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i) > 0
    finally:
        segmentation_node.GetScene().RemoveNode(labelmap_node)


def save_segmentation(segmentation_node, path: Path) -> Path:
    """Write a ``.seg.nrrd`` (names, colours, terminology and tags included)."""
    return write_node(segmentation_node, slicer.vtkMRMLSegmentationStorageNode(), path)


def load_segmentation(path: Path, runtime: SlicerRuntime | None = None):
    """Read a ``.seg.nrrd`` into a new segmentation node."""
    runtime = runtime or get_runtime()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation file {path} does not exist", "check the path")
    node = runtime.segmentations.LoadSegmentationFromFile(str(path), True, path.name.split(".")[0])
    if node is None:
        raise InputError(f"{path} is not a readable segmentation", "give a .seg.nrrd written by Slicer")
    return node


def segment_voxel_counts(segmentation_node) -> dict[str, int]:
    """Voxel count of every segment, read from Slicer's shared label map layers (no export)."""
    segmentation = segmentation_node.GetSegmentation()
    histograms: dict[str, np.ndarray] = {}  # one pass per shared layer, whatever its number of segments
    counts = {}
    for segment_id in segment_ids(segmentation_node):
        layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        values = image_scalars_kji(layer)
        value = segmentation.GetSegment(segment_id).GetLabelValue()
        if values is None:
            counts[segment_id] = 0
            continue
        address = layer.GetAddressAsString("")
        if address not in histograms:
            histograms[address] = np.bincount(values.ravel().astype(np.int64, copy=False))
        histogram = histograms[address]
        counts[segment_id] = int(histogram[value]) if 0 <= value < histogram.size else 0
    return counts


def describe_segments(segmentation_node) -> list[dict]:
    """The label table of a segmentation: name, label value, SNOMED codes, colour, model per segment."""
    from dataclasses import asdict

    segmentation = segmentation_node.GetSegmentation()
    table = []
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        codes = terminology.deserialize(segment.GetTerminology())
        provenance = Provenance.of_segment(segment)
        table.append({
            "segment_id": segment_id,
            "name": segment.GetName(),
            "value": label_value(segment),
            "codes": asdict(codes) if codes else None,
            "color": [round(channel * 255) for channel in segment.GetColor()],
            "model_id": provenance.model_id if provenance else None,
            "confidence": float(read_tag(segment, CONFIDENCE_TAG)) if read_tag(segment, CONFIDENCE_TAG) else None,
            "review": read_tag(segment, REVIEW_TAG),
        })
    return table


def on_same_grid(segmentation_node, volume_node, tolerance_mm: float = 1e-3) -> bool:
    """Whether the segmentation's reference geometry is the volume's voxel grid."""
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return False
    geometry = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, geometry, False):
        return False
    matrix = vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(matrix)
    ours, theirs = vtk_matrix_to_array(matrix), vtk_matrix_to_array(ijk_to_ras_vtk(volume_node))
    i0, i1, j0, j1, k0, k1 = geometry.GetExtent()
    # a geometry with a non-zero extent start is the same grid shifted: compare the corner voxels instead
    corner = ours @ np.array([i0, j0, k0, 1.0])
    return (
        (i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1) == tuple(volume_node.GetImageData().GetDimensions())
        and np.allclose(ours[:3, :3], theirs[:3, :3], atol=tolerance_mm)
        and np.allclose(corner[:3], theirs[:3, 3], atol=tolerance_mm)
    )


def require_same_grid(segmentation_node, segmentation_label: str, volume_node, volume_label: str) -> None:
    """Refuse a segmentation that was not made on this volume's voxel grid (export maps voxels to the source
    images one to one; RECIST measured on another grid is not the lesion the reader sees)."""
    if not on_same_grid(segmentation_node, volume_node):
        raise InputError(f"{segmentation_label} was not made on the image grid of {volume_label}",
                         "give the series or file the segmentation was made from (or resample the segmentation "
                         "onto this volume first)")


def vtk_matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def image_scalars_kji(image) -> np.ndarray | None:
    """A view of an image's voxels in (k, j, i) order, or None when it has none."""
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        return None
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    return numpy_support.vtk_to_numpy(scalars).reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)


def label_boxes(array: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Every label's bounding box in one pass over a shared layer: ``boxes[value - 1]`` (None: absent)."""
    from scipy import ndimage

    return ndimage.find_objects(array if array.dtype.kind in "iu" else array.astype(np.int32))


@dataclass
class GridLayer:
    """One of Slicer's shared label map layers, placed on a volume's voxel grid."""

    array: np.ndarray  # a view of the layer's voxels (k, j, i); values are segment label values
    offset_kji: np.ndarray  # where array[0, 0, 0] lies on the volume grid (may be outside it)


def layer_on_grid(layer_image, volume_ijk_to_ras: np.ndarray) -> GridLayer | None:
    """The layer when its voxels are the volume's voxels shifted by whole voxels; else None.

    Reading layers directly is what makes per-segment work fast: one view per layer instead of
    one full-volume export per segment.
    """
    array = image_scalars_kji(layer_image)
    if array is None:
        return None
    matrix = vtk.vtkMatrix4x4()
    layer_image.GetImageToWorldMatrix(matrix)
    layer_to_volume = np.linalg.inv(volume_ijk_to_ras) @ vtk_matrix_to_array(matrix)
    shift = layer_to_volume[:3, 3]
    same_axes = np.allclose(layer_to_volume[:3, :3], np.eye(3), atol=1e-4)
    if not (same_axes and np.allclose(shift, np.round(shift), atol=1e-3)):
        return None
    offset_ijk = np.round(shift).astype(int) + np.array(layer_image.GetExtent()[0::2])
    return GridLayer(array, offset_ijk[::-1])


def _placement(layer: GridLayer, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """The part of a layer inside the volume, as (slices into the layer, slices into the volume)."""
    low = np.maximum(layer.offset_kji, 0)
    high = np.minimum(layer.offset_kji + layer.array.shape, shape)
    if np.any(high <= low):
        return None
    inside = tuple(slice(a - o, b - o) for a, b, o in zip(low, high, layer.offset_kji, strict=True))
    return inside, tuple(slice(a, b) for a, b in zip(low, high, strict=True))


def segment_number_map(segmentation_node, volume_node, ids: Sequence[str]) -> np.ndarray | None:
    """``ids[n]`` drawn as ``n + 1`` on the volume grid, one pass per shared layer.

    None when a layer is not on the volume's grid or two of the segments overlap (then each
    segment needs its own mask: :func:`segment_mask`).
    """
    shape = shape_kji(volume_node)
    grid = vtk_matrix_to_array(ijk_to_ras_vtk(volume_node))
    numbers = np.zeros(shape, dtype=np.uint8 if len(ids) < 255 else np.uint16)
    segmentation = segmentation_node.GetSegmentation()
    by_layer: dict[str, tuple[object, list[tuple[int, int]]]] = {}
    for number, segment_id in enumerate(ids, start=1):
        image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        if image is None:
            return None
        address = image.GetAddressAsString("")
        value = segmentation.GetSegment(segment_id).GetLabelValue()
        by_layer.setdefault(address, (image, []))[1].append((value, number))
    for image, pairs in by_layer.values():
        layer = layer_on_grid(image, grid)
        if layer is None:
            return None
        lookup = np.zeros(int(max(layer.array.max(), max(v for v, _ in pairs))) + 1, dtype=numbers.dtype)
        for value, number in pairs:
            lookup[value] = number
        placed = _placement(layer, shape)
        if placed is None:
            continue
        inside, target = placed
        drawn = lookup[layer.array[inside]]
        region = numbers[target]
        if np.any(region[drawn > 0]):  # segments of different layers overlap here
            return None
        np.maximum(region, drawn, out=region)
    return numbers
