"""RT Structure Set encoding: ROIs (boolean boxes on the acquired slices) to a saved RTSTRUCT file.

Pure numpy / pydicom / highdicom, without the Slicer core, so that a plain label array (the bench feeds
it the same arrays as rt-utils) is encoded without loading VTK. :mod:`aiportal.rt.writer` makes the ROIs
from a segmentation node. What is written is described there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from aiportal import __version__
from aiportal.export.dicom_objects import MANUFACTURER, copy_patient_and_study, with_utf8
from aiportal.models.catalog import Code
from aiportal.provenance import software_versions
from aiportal.rt.contours import stack_contours

if TYPE_CHECKING:
    from aiportal.terminology import SegmentCodes

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# What RT Referenced Study Sequence items name as their SOP class (PS3.3 C.8.8.5; what planning systems write)
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"
# SNOMED categories whose segments are organs for RT ROI Interpreted Type (CID 7150 codes)
_ORGAN_CATEGORIES = {"91723000", "123037004", "85756007"}  # anatomical structure (new, old), tissue
_DS_FORMAT = "%.3f"  # mm: 1 µm, far below a pixel; at most 16 characters (DS) below 1e11 mm
_DS_LIMIT = 1e11
_CONTOUR_DATA = 0x30060050


@dataclass
class RoiSpec:
    """One ROI of a structure set: what the segment is, and its voxels (a boolean box on the acquired slices)."""

    name: str
    color: tuple[int, int, int]
    mask: np.ndarray  # (k, j, i) boolean, the ROI's bounding box
    origin: tuple[int, int, int]  # where the box starts in (k, j, i)
    codes: SegmentCodes | None = None
    algorithm: str = "AUTOMATIC"  # ROI Generation Algorithm: AUTOMATIC, SEMIAUTOMATIC or MANUAL
    description: str = ""  # ROI Generation Description (the model that made it)


@dataclass
class RtStructExport:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    roi_numbers: dict[str, int]  # ROI name -> ROI number
    empty_segments: list[str] = field(default_factory=list)
    number_of_contours: int = 0
    number_of_points: int = 0
    size_bytes: int = 0
    seconds: float = 0.0


def rois_from_labels(labels: np.ndarray, names: dict[int, str], colors: dict[int, tuple[int, int, int]] | None = None,
                     codes: dict[int, SegmentCodes] | None = None) -> list[RoiSpec]:
    """ROIs of a label array on the acquired slices (k, j, i): one per label value present, in value order."""
    rois = []
    for value, box in enumerate(ndimage.find_objects(labels), start=1):  # boxes[value - 1]; None: absent
        if box is None or value not in names:
            continue
        rois.append(RoiSpec(names[value], (colors or {}).get(value, (128, 174, 128)), labels[box] == value,
                            tuple(s.start for s in box), (codes or {}).get(value)))
    return rois


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme, code.meaning[:64]
    return item


def _image_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    return item


def _as_written(item: Dataset) -> Dataset:
    """Mark an item as already in the file's encoding (explicit VR little endian, its character set), as if
    read from a file: pydicom then writes its elements as they are instead of re-checking every one."""
    item.set_original_encoding(False, True, item._character_set)
    return item


def _slice_geometry(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin and the mm steps of one row and one column of a slice, in LPS."""
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    return (np.asarray(header.ImagePositionPatient, dtype=float), orientation[3:] * row_spacing,
            orientation[:3] * column_spacing)


def _contour_items(roi: RoiSpec, headers: list[Dataset], references: list[Dataset],
                   geometry: list) -> tuple[list[Dataset], int]:
    items, points = [], 0
    k0, j0, i0 = roi.origin
    for dk, outlines in enumerate(stack_contours(roi.mask)):
        k = k0 + dk
        origin, row_step, column_step = geometry[k]
        for outline in outlines:
            rows, columns = outline[:, 0] + j0, outline[:, 1] + i0
            lps = origin + rows[:, None] * row_step + columns[:, None] * column_step
            item = Dataset()
            item.ContourImageSequence = Sequence([references[k]])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(lps)
            item.ContourNumber = len(items) + 1
            item[_CONTOUR_DATA] = _contour_data(lps.ravel())
            _as_written(item)
            items.append(item)
            points += len(lps)
    return items, points


def _contour_data(values: np.ndarray) -> RawDataElement:
    """ContourData (DS, VM 3-3n) as its encoded value: one DSfloat object per number (pydicom's way)
    made and wrote 1.4 M objects for a 31-organ CT, most of the export time; here one format call."""
    if not np.all(np.abs(values) < _DS_LIMIT):
        raise ValueError("contour coordinates beyond 1e11 mm: the source geometry is broken")
    text = "\\".join([_DS_FORMAT] * len(values)) % tuple(values.tolist())
    encoded = (text + " " * (len(text) % 2)).encode("ascii")  # even length, padded with a space (PS3.5 6.2)
    return RawDataElement(BaseTag(_CONTOUR_DATA), "DS", len(encoded), encoded, 0, False, True)


def _interpreted_type(codes: SegmentCodes | None) -> str:
    """ORGAN for anatomy; otherwise empty (Type 2): a target or avoidance role is the planner's call."""
    return "ORGAN" if codes is not None and codes.category.value in _ORGAN_CATEGORIES else ""


def encode_rtstruct(
    rois: list[RoiSpec],
    headers: list[Dataset],
    path,
    *,
    series_number: int = 302,
    series_description: str = "AI structure set",
    label: str = "AI structures",
) -> RtStructExport:
    """Encode and save ROIs (on ``headers``' slices, in their order) as an RT Structure Set."""
    started = time.monotonic()
    first = headers[0]
    frame_of_reference = str(first.FrameOfReferenceUID)
    dataset = with_utf8(
        hd.base.SOPClass,
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        sop_class_uid=RT_STRUCTURE_SET_STORAGE,
        instance_number=1,
        modality="RTSTRUCT",
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_versions()[:64],
        device_serial_number=__version__,
        series_description=series_description[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    copy_patient_and_study(dataset, first)
    dataset.OperatorsName = ""  # RT Series, Type 2
    dataset.FrameOfReferenceUID = frame_of_reference  # Frame of Reference module (dciodvfy asks for it)
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    dataset.StructureSetLabel = label[:16]
    dataset.StructureSetName = label[:64]
    now = datetime.now()
    dataset.StructureSetDate, dataset.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.SeriesDate, dataset.SeriesTime = dataset.StructureSetDate, dataset.StructureSetTime

    references = [_as_written(_image_reference(header)) for header in headers]  # one per contour: 10^4 writes
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence([_image_reference(header) for header in headers])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_MANAGEMENT, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = Sequence([study])
    dataset.ReferencedFrameOfReferenceSequence = Sequence([frame])

    geometry = [_slice_geometry(header) for header in headers]
    structure_rois, roi_contours, observations = [], [], []
    numbers, contours, points = {}, 0, 0
    for number, roi in enumerate(rois, start=1):
        numbers[roi.name] = number
        structure = Dataset()
        structure.ROINumber = number
        structure.ReferencedFrameOfReferenceUID = frame_of_reference
        structure.ROIName = roi.name[:64]
        structure.ROIGenerationAlgorithm = roi.algorithm
        if roi.description:
            structure.ROIGenerationDescription = roi.description[:64]
        structure_rois.append(structure)

        items, roi_points = _contour_items(roi, headers, references, geometry)
        contour = Dataset()
        contour.ROIDisplayColor = list(roi.color)
        contour.ContourSequence = Sequence(items)
        contour.ReferencedROINumber = number
        roi_contours.append(contour)
        contours, points = contours + len(items), points + roi_points

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        if roi.codes is not None:  # the segment's SNOMED type (CID 4 / 7150 family)
            observation.RTROIIdentificationCodeSequence = Sequence([_code_item(roi.codes.type)])
        observation.RTROIInterpretedType = _interpreted_type(roi.codes)
        observation.ROIInterpreter = ""
        observations.append(observation)
    dataset.StructureSetROISequence = Sequence(structure_rois)
    dataset.ROIContourSequence = Sequence(roi_contours)
    dataset.RTROIObservationsSequence = Sequence(observations)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return RtStructExport(path, str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), numbers,
                          number_of_contours=contours, number_of_points=points, size_bytes=path.stat().st_size,
                          seconds=time.monotonic() - started)
