"""Warp a prior segmentation onto the current scan with a registration result (follow-up studies).

Each of Slicer's shared label map layers is warped as one label map with nearest-neighbour
interpolation, so segments that overlap (in different layers) stay overlapping; every segment
keeps its name, colour, terminology and tags (provenance, tracking UID) on the new grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer

from aiportal.register.registration import RegistrationResult, image_from_node
from aiportal.runtime import SlicerRuntime
from aiportal.segmentation import (
    ijk_to_ras_vtk,
    oriented_image,
    segment_ids,
    segment_mask,
    segment_number_map,
    shape_kji,
)


def _layers(segmentation_node) -> list[list[str]]:
    """Segment ids grouped by the shared label map layer that holds them (segments in one layer never overlap)."""
    groups: dict[str, list[str]] = {}
    for segment_id in segment_ids(segmentation_node):
        image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        groups.setdefault(image.GetAddressAsString("") if image is not None else segment_id, []).append(segment_id)
    return list(groups.values())


def propagate_segmentation(runtime: SlicerRuntime, result: RegistrationResult, segmentation_node, fixed_node,
                           moving_node, *, name: str | None = None):
    """A new segmentation on ``fixed_node``'s grid: ``segmentation_node`` (made on ``moving_node``) warped by
    ``result`` (the registration of ``moving_node`` to ``fixed_node``)."""
    propagated = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                 name or f"{segmentation_node.GetName()} on {fixed_node.GetName()}")
    propagated.CreateDefaultDisplayNodes()
    propagated.SetReferenceImageGeometryParameterFromVolumeNode(fixed_node)
    source = segmentation_node.GetSegmentation()
    fixed_grid = image_from_node(fixed_node, np.zeros(shape_kji(fixed_node), np.uint16))
    for ids in _layers(segmentation_node):
        numbers = segment_number_map(segmentation_node, moving_node, ids)
        if numbers is None:  # a layer off the moving grid: number the segments one by one
            numbers = np.zeros(shape_kji(moving_node), np.uint16)
            for number, segment_id in enumerate(ids, start=1):
                numbers[segment_mask(segmentation_node, segment_id, moving_node)] = number
        warped = sitk.Resample(image_from_node(moving_node, numbers.astype(np.uint16)), fixed_grid,
                               result.itk_transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
        before = set(segment_ids(propagated))
        labels = sitk.GetArrayFromImage(warped)
        if not labels.any():
            continue
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            oriented_image(labels, ijk_to_ras_vtk(fixed_node)), propagated, "", "")
        segmentation = propagated.GetSegmentation()
        for segment_id in segment_ids(propagated):
            if segment_id in before:
                continue
            segment = segmentation.GetSegment(segment_id)
            number = segment.GetLabelValue()  # the value that addresses it in its new layer
            segment.DeepCopyMetadata(source.GetSegment(ids[number - 1]))  # name, colour, terminology, tags
            segment.SetLabelValue(number)
    return propagated
