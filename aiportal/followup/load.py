"""A time point from a DICOM folder: its image series and the DICOM SEG made on it, as Slicer nodes.

The SEG's frames are read by the SOP Instance UIDs they reference (highdicom), in the order of the loaded
volume's k axis, so a SEG made on the same series lands voxel for voxel on the volume; a SEG that references
other images is refused with its name. Segment names come from the SEG (Segment Label), and so do their
codes (terminology), so the follow-up's SR names the same findings.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import slicer

from aiportal.errors import InputError
from aiportal.export.dicom_seg import TRACKING_UID_TAG
from aiportal.export.dicom_source import export_source
from aiportal.followup.tracking import TimePoint
from aiportal.io.dicom_series import list_series
from aiportal.io.volumes import load_volume
from aiportal.models.catalog import Code, LabelSpec
from aiportal.segmentation import ijk_to_ras_vtk, oriented_image, segment_ids
from aiportal.terminology import serialize

SEGMENT_NUMBER_TAG = "AIPortal.SegmentNumber"  # the segment's Segment Number in the SEG it was read from


class NoSegmentation(InputError):
    """A time point without a SEG of its images (the caller may segment it instead)."""


def seg_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - not DICOM: skipped, as list_series does
            continue
        if header.get("Modality") == "SEG":
            found.append(path)
    return found


def load_time_point(folder: Path, runtime, *, label: str | None = None, seg: Path | None = None) -> TimePoint:
    """The image series of ``folder`` (the only one, or the largest) with the SEG that references it
    (``seg``, or the newest SEG in the folder that does)."""
    folder = Path(folder)
    images = [s for s in list_series(folder) if s.is_image]
    if not images:
        raise InputError(f"{folder} holds no image series", "give the folder of a study's DICOM images")
    series = max(images, key=lambda s: s.number_of_files)
    loaded = load_volume(folder, runtime, series_uid=series.series_uid or None)
    source = export_source(loaded.source, loaded.node)
    first = source.datasets[0]
    name = label or str(first.get("StudyDate", "") or first.get("StudyInstanceUID", ""))[:16] or folder.name
    loaded.node.SetName(name)
    candidates = [Path(seg)] if seg else seg_files(folder)
    uids = source.sop_instance_uids
    for path in reversed(candidates):
        dataset = hd.seg.segread(path)
        referenced = {str(item.ReferencedSOPInstanceUID) for item in dataset.ReferencedSeriesSequence[0]
                      .ReferencedInstanceSequence}
        if referenced <= set(uids):
            node = _segmentation_from_seg(dataset, uids, loaded.node, runtime, name)
            return TimePoint(name, loaded.node, node, str(first.StudyInstanceUID),
                             str(first.get("FrameOfReferenceUID", "")), source, seg_path=Path(path))
    raise NoSegmentation(f"Study {first.get('StudyDate', '') or '(no date)'} {first.StudyInstanceUID} has no DICOM "
                         f"SEG of its image series {series.series_uid}",
                         "segment it first (aiportal segment --pacs NAME --study UID --push, or on the folder) and "
                         "run the follow-up again")


def segment_and_load(folder: Path, runtime, model_id: str, out_dir: Path, *, label: str | None = None) -> TimePoint:
    """A time point without a SEG, segmented first by ``model_id`` (the same pipeline as `aiportal segment`,
    audited; its SEG and run.json stay in ``out_dir``)."""
    return load_time_point(folder, runtime, label=label, seg=segment_folder(folder, model_id, out_dir))


def segment_folder(folder: Path, model_id: str, out_dir: Path) -> Path:
    """The SEG ``model_id`` makes of the folder's image series (the largest), by the pipeline of `aiportal
    segment` in a runtime of its own (so a worker thread may call it); its run.json stays in ``out_dir``."""
    from aiportal.export.exporter import ExportOptions, parse_formats
    from aiportal.pipeline import PipelineRequest, run_segmentation

    images = [s for s in list_series(folder) if s.is_image]
    series = max(images, key=lambda s: s.number_of_files) if images else None
    run_segmentation(PipelineRequest(Path(folder), model_id, Path(out_dir), ExportOptions(formats=parse_formats("seg")),
                                     series_uid=series.series_uid if series else None, via="followup"))
    return Path(out_dir) / "segmentation.dcm"


def model_of_seg(path: Path) -> str:
    """The id of the model named in a SEG (the first segment's algorithm, matched by the catalog title the
    exporter writes, or by id), else "" (a hand-made SEG, or a model this installation does not know)."""
    from aiportal.models.catalog import get_catalog

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    names = [str(item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName)
             for item in dataset.SegmentSequence if "SegmentationAlgorithmIdentificationSequence" in item]
    if not names:
        return ""
    return next((entry.id for entry in get_catalog().models if names[0] in (entry.title, entry.id)), "")


def _segmentation_from_seg(seg: hd.seg.Segmentation, uids: list[str], volume, runtime, name: str):
    node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} SEG")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation = node.GetSegmentation()
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                   assert_missing_frames_are_empty=True)
        mask = np.asarray(pixels[..., 0] > 0, np.uint8)
        if not mask.any():
            continue
        before = set(segment_ids(node))
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            oriented_image(mask, ijk_to_ras_vtk(volume)), node, "", "")
        (segment_id,) = set(segment_ids(node)) - before
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(str(item.SegmentLabel))
        segment.SetTag(SEGMENT_NUMBER_TAG, str(number))  # the follow-up SR references this segment of the SEG
        if "TrackingUID" in item:  # the lesion keeps the identity its SEG and SR gave it
            segment.SetTag(TRACKING_UID_TAG, str(item.TrackingUID))
        description = hd.seg.SegmentDescription.from_dataset(item)
        segment.SetTerminology(serialize(LabelSpec(
            number, str(item.SegmentLabel), _code(description.segmented_property_category),
            _code(description.segmented_property_type))))
    return node


def segment_numbers(point: TimePoint) -> dict[str, int]:
    """Segment id -> its Segment Number in the time point's SEG (segments read from one)."""
    from aiportal.provenance import read_tag

    segmentation = point.segmentation.GetSegmentation()
    numbers = {segment_id: read_tag(segmentation.GetSegment(segment_id), SEGMENT_NUMBER_TAG)
               for segment_id in segment_ids(point.segmentation)}
    return {segment_id: int(number) for segment_id, number in numbers.items() if number}


def _code(concept) -> Code:
    return Code(str(concept.scheme_designator), str(concept.value), str(concept.meaning))
