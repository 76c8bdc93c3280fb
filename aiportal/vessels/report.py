"""Vessel analysis of segments in a Slicer scene: ``vessels.json`` and Slicer markups.

Per vessel: the centreline as a Markups curve, and at the cross-section with the largest
maximum diameter that counts, two Markups lines (maximum diameter, perpendicular diameter),
linked to the segment by the same node attributes as the RECIST axes. A flat segment (a landmark
disc drawn or predicted across a vessel) is measured on its own plane (:mod:`aiportal.vessels.flat`):
its two lines, no centreline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aiportal.errors import InputError
from aiportal.io.markups import write_markups_json
from aiportal.io.volumes import ijk_to_ras_matrix
from aiportal.measure.recist import MEASUREMENT_ATTRIBUTE, SEGMENT_ID_ATTRIBUTE, SEGMENTATION_ID_ATTRIBUTE
from aiportal.segmentation import segment_ids, segment_mask
from aiportal.vessels.analysis import DEFAULT_STEP_MM, VesselMeasurement, measure_vessel


def measure_vessel_segment(segmentation_node, segment_id: str, volume_node,
                           step_mm: float = DEFAULT_STEP_MM) -> VesselMeasurement:
    """Centreline and cross-sections of one segment on ``volume_node``'s grid (RAS millimetres); a flat
    segment (a landmark disc) is measured as one cross-section on its own plane."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"Segment {segment_id!r} is not in {segmentation_node.GetName()}",
                         f"use one of: {', '.join(segment_ids(segmentation_node)) or 'none'}")
    if segmentation_node.GetParentTransformNode() or volume_node.GetParentTransformNode():
        raise InputError(f"{segmentation_node.GetName()} or {volume_node.GetName()} is transformed",
                         "harden the transforms (Data module) before measuring")
    name = segment.GetName()
    mask = segment_mask(segmentation_node, segment_id, volume_node)
    if np.count_nonzero(mask) < 8:
        raise InputError(f"Segment {name!r} of {segmentation_node.GetName()} has too few voxels for a vessel",
                         "segment the whole vessel, or measure it with RECIST")
    from aiportal.vessels.flat import disc_measurement, is_disc

    ijk_to_ras = ijk_to_ras_matrix(volume_node)
    if is_disc(mask, ijk_to_ras):
        measured = disc_measurement(mask, ijk_to_ras, name)
    else:
        measured = measure_vessel(mask, ijk_to_ras, name, step_mm)
    measured.segment_id = segment_id
    return measured


def measure_vessels(segmentation_node, volume_node, names: list[str],
                    step_mm: float = DEFAULT_STEP_MM) -> list[VesselMeasurement]:
    """Each named segment as a vessel; an unknown name is refused with the names there are."""
    segmentation = segmentation_node.GetSegmentation()
    by_name = {segmentation.GetSegment(i).GetName(): i for i in segment_ids(segmentation_node)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"No segment named {', '.join(unknown)} in {segmentation_node.GetName()}",
                         f"use one of: {', '.join(by_name)}")
    return [measure_vessel_segment(segmentation_node, by_name[n], volume_node, step_mm) for n in names]


def write_vessels_json(vessels: list[VesselMeasurement], path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"units": "mm, mm2, RAS coordinates",
                                "vessels": [v.as_json() for v in vessels]}, indent=1))
    return path


def _tag(node, segmentation_node, segment_id: str, what: str) -> None:
    node.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, segmentation_node.GetID())
    node.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
    node.SetAttribute(MEASUREMENT_ATTRIBUTE, what)


def add_vessel_markups(scene, vessel: VesselMeasurement, segmentation_node) -> list:
    """The main centreline (a Markups curve, a point every ~5 mm) and, at the maximum, the maximum and
    perpendicular diameters (Markups lines)."""
    nodes = []
    if vessel.centreline.paths:  # a disc has none
        main = vessel.centreline.paths[0].points
        step = max(1, int(round(5.0 / 0.5)))  # the polyline is ~0.5 mm apart
        curve = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", f"{vessel.name} centerline")
        curve.CreateDefaultDisplayNodes()
        for point in np.vstack([main[::step], main[-1:]]):
            curve.AddControlPointWorld(*map(float, point))
        _tag(curve, segmentation_node, vessel.segment_id, "vessel centerline")
        nodes.append(curve)
    if vessel.maximum is not None:
        section = vessel.maximum.section
        for kind, endpoints in (("max diameter", section.max_diameter_endpoints),
                                ("perpendicular diameter", section.perpendicular_endpoints)):
            line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{vessel.name} {kind}")
            line.CreateDefaultDisplayNodes()
            for point in endpoints:
                line.AddControlPointWorld(*map(float, point))
            _tag(line, segmentation_node, vessel.segment_id, f"vessel {kind}")
            nodes.append(line)
    return nodes


def write_vessel_markups(scene, vessels: list[VesselMeasurement], segmentation_node, folder: Path) -> list[Path]:
    """Each vessel's markups (:func:`add_vessel_markups`) as ``.mrk.json`` files, loadable in Slicer."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    written = []
    for vessel in vessels:
        written += [write_markups_json(node, folder) for node in add_vessel_markups(scene, vessel, segmentation_node)]
    return written


def recist_names_besides(segmentation_node, vessel_names: list[str]) -> list[str]:
    """The segment names other than the vessels: what RECIST measures when the vessels are measured apart."""
    segmentation = segmentation_node.GetSegmentation()
    return [name for name in (segmentation.GetSegment(i).GetName() for i in segment_ids(segmentation_node))
            if name not in vessel_names]


def write_measurement_sr(segmentation_node, loaded_volume, axes, vessels: list[VesselMeasurement], folder: Path,
                         *, assign_missing_uids: bool = False, key_images: list | None = None) -> list[Path]:
    """``segmentation.dcm`` (DICOM SEG of the segments) and ``measurements.dcm`` (TID 1500 SR: RECIST axes and
    vessel diameters, tied to their segments), referencing the DICOM series ``loaded_volume`` came from.
    ``key_images`` (rendered PNGs, one per measurement of ``axes``) are also written as DICOM Secondary
    Captures beside their PNGs and listed in the SR's image library."""
    from aiportal.export.dicom_seg import write_seg
    from aiportal.export.dicom_source import export_source
    from aiportal.export.dicom_sr import write_sr
    from aiportal.segmentation import on_same_grid

    folder = Path(folder)
    if not on_same_grid(segmentation_node, loaded_volume.node):
        raise InputError(f"{segmentation_node.GetName()} was not made on the image grid of {loaded_volume.path}",
                         "give the DICOM series the segmentation was made on, or leave out --sr")
    source = export_source(loaded_volume.source, loaded_volume.node, assign_missing_uids=assign_missing_uids,
                           corrected_copy_folder=folder / "source")
    seg = write_seg(segmentation_node, loaded_volume.node, source, folder / "segmentation.dcm")
    captures = []
    if key_images:
        import pydicom

        from aiportal.export.dicom_sc import write_key_image_scs

        captures = write_key_image_scs(list(zip(key_images, axes, strict=True)), source,
                                       Path(key_images[0].path).parent)
    sr = write_sr([], None, seg, seg.path, source, folder / "measurements.dcm", axes=axes, vessels=vessels,
                  series_description="AI measurements",
                  key_images=[pydicom.dcmread(c.path, stop_before_pixels=True) for c in captures])
    return [seg.path, sr.path, *(c.path for c in captures)]
