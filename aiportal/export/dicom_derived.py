"""The export's key images (Secondary Capture) and 3D models (Encapsulated STL), made from the scene.

Both read the scene (RECIST measurement and key image rendering; surfaces), so they run in the
exporter's process before or after the SEG/SR are encoded; the DICOM encoding itself is in
:mod:`aiportal.export.dicom_sc` and :mod:`aiportal.export.dicom_estl`. Results are plain data
(:class:`~aiportal.export.files.ExportedFile`) for :mod:`aiportal.export.exporter` to list.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from aiportal.export.dicom_estl import SegReference
from aiportal.export.dicom_source import ExportSource
from aiportal.export.files import ExportedFile

KEY_IMAGES_FOLDER = "key_images"
MODELS_FOLDER = "models"
_SEG_SOP_CLASSES = {"BINARY": "1.2.840.10008.5.1.4.1.1.66.4", "LABELMAP": "1.2.840.10008.5.1.4.1.1.66.7"}


@dataclass
class KeyImages:
    files: list[ExportedFile] = field(default_factory=list)
    headers: list[pydicom.Dataset] = field(default_factory=list)  # of the Secondary Captures, for the SR
    measurements: list = field(default_factory=list)  # the RECIST measurements they show, for the SR
    notes: list[str] = field(default_factory=list)


def key_image_objects(segmentation_node, volume_node, source: ExportSource, folder: Path) -> KeyImages:
    """Measure each lesion (RECIST), render its key image and write it as PNG and Secondary Capture.

    Lesions that cannot be measured (vessels, single voxels, ...) are listed in ``notes``, as are
    segments split into several lesions: a reader must know what the key images leave out.
    """
    from aiportal.export.dicom_sc import write_key_image_scs
    from aiportal.measure.key_images import write_key_images
    from aiportal.measure.report import measure_segmentation, measurement_warnings

    folder = Path(folder)
    measurements, skipped = measure_segmentation(segmentation_node, volume_node)
    result = KeyImages(measurements=measurements,
                       notes=[f"key images: {warning}" for warning in measurement_warnings(measurements, skipped)])
    if not measurements:
        result.notes.append("key images: no lesion could be measured, so no key image was written")
        return result
    target = folder / KEY_IMAGES_FOLDER
    keys = write_key_images(volume_node, segmentation_node, measurements, target)
    for written in write_key_image_scs(list(zip(keys, measurements, strict=True)), source, target):
        result.files += [ExportedFile("png", str(written.png.relative_to(folder))),
                         ExportedFile("sc", str(written.path.relative_to(folder)), written.sop_instance_uid,
                                     written.series_instance_uid)]
        result.headers.append(pydicom.dcmread(written.path, stop_before_pixels=True))
    return result


def seg_reference(seg_arguments: dict) -> SegReference:
    """The SEG a plan (:class:`aiportal.export.dicom_seg.SegPlan` arguments) will write, before it is encoded."""
    return SegReference(_SEG_SOP_CLASSES[seg_arguments["segmentation_type"]], str(seg_arguments["sop_instance_uid"]),
                        str(seg_arguments["series_instance_uid"]))


def model_objects(segmentation_node, source: ExportSource, folder: Path, seg: SegReference, *, merged: bool,
                  smoothing: float, decimation: float, volume_true: bool,
                  stl_paths: list[Path] | None = None) -> list[ExportedFile]:
    """Encapsulated STL of each non-empty segment (or one of all, ``merged``) in ``folder/models``.

    The surfaces are LPS in mm (the source's patient coordinates). ``stl_paths`` are the export's own
    LPS STL files of every segment, made with the same options (:func:`export_surfaces` order); without
    them the surfaces are made here and only the DICOM objects are kept.
    """
    from aiportal import terminology
    from aiportal.export.dicom_estl import write_models
    from aiportal.export.dicom_seg import coded
    from aiportal.export.surfaces import export_surfaces
    from aiportal.segmentation import segment_ids, segment_voxel_counts

    folder = Path(folder)
    segmentation = segmentation_node.GetSegmentation()
    counts = segment_voxel_counts(segmentation_node)
    ids = [segment_id for segment_id in segment_ids(segmentation_node) if counts.get(segment_id)]
    work = folder / MODELS_FOLDER / ".stl"
    if stl_paths is None:
        work.mkdir(parents=True)
        stl_paths = export_surfaces(segmentation_node, work, file_format="STL", merged=merged, coordinates="LPS",
                                    smoothing=smoothing, decimation=decimation, segment_ids=ids,
                                    volume_true=volume_true)
    if merged:
        entries = [(segmentation_node.GetName() or "Segmentation", Path(stl_paths[0]), None)]
    else:
        entries = []
        for segment_id, path in zip(ids, stl_paths, strict=True):
            segment = segmentation.GetSegment(segment_id)
            codes = terminology.deserialize(segment.GetTerminology())
            entries.append((segment.GetName(), Path(path), coded(codes.type) if codes else None))
    models = write_models(entries, source, folder / MODELS_FOLDER, seg_reference=seg)
    shutil.rmtree(work, ignore_errors=True)
    return [ExportedFile("estl", str(model.path.relative_to(folder)), model.sop_instance_uid,
                        model.series_instance_uid) for model in models]
