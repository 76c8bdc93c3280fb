"""Read an RT Structure Set back into label arrays on a reference image grid (pure numpy / pydicom).

Each ROI's CLOSED_PLANAR contours are mapped from LPS mm into the reference volume's (k, j, i) voxel
coordinates and filled slice by slice, even-odd (holes are contours inside contours; see
:mod:`aiportal.rt.contours`). A contour must lie in a slice plane of the reference grid: one between
slices, or a structure set from another Frame of Reference, is refused with the reason, never guessed.
ROIs may overlap (a body outline holds its organs), so they are returned as separate masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from aiportal.errors import InputError
from aiportal.models.catalog import Code
from aiportal.rt.contours import fill_contours
from aiportal.rt.encode import RT_STRUCTURE_SET_STORAGE

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_OFF_PLANE_VOXELS = 0.1  # a contour further than this from a slice plane (in slices) is off the grid


@dataclass
class RoiRead:
    number: int
    name: str
    color: tuple[int, int, int]
    mask: np.ndarray  # (k, j, i) boolean on the reference grid
    interpreted_type: str = ""
    type_code: Code | None = None
    contours: int = 0


@dataclass
class StructureSetRead:
    rois: list[RoiRead]
    frame_of_reference_uid: str
    referenced_series_uids: list[str]
    label: str
    skipped: list[str] = field(default_factory=list)  # ROIs without closed planar contours (points, open lines)


def read_structure_set(path: Path) -> Dataset:
    """The dataset of an RT Structure Set file, or a one-line refusal naming the file."""
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"{path.name} is not a readable DICOM file ({error})",
                         "give the RT Structure Set file (RTSTRUCT) from a planning system or aiportal") from None
    if str(dataset.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise InputError(f"{path.name} is not an RT Structure Set (modality {dataset.get('Modality', '?')})",
                         "give an RTSTRUCT file; a DICOM SEG loads with `aiportal` import of a segmentation")
    return dataset


def _referenced(dataset: Dataset) -> tuple[list[str], list[str]]:
    frames, series = [], []
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        frames.append(str(frame.FrameOfReferenceUID))
        for study in frame.get("RTReferencedStudySequence", []):
            series += [str(item.SeriesInstanceUID) for item in study.get("RTReferencedSeriesSequence", [])]
    return frames, series


def _type_code(observation: Dataset | None) -> Code | None:
    items = observation.get("RTROIIdentificationCodeSequence", []) if observation is not None else []
    if not items:
        return None
    item = items[0]
    return Code(str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.get("CodeMeaning", "")))


def rasterize_structure_set(dataset: Dataset, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int],
                            frame_of_reference_uid: str | None = None, where: str = "the structure set"
                            ) -> StructureSetRead:
    """Every ROI of ``dataset`` as a boolean mask on the grid (``ijk_to_ras``, ``shape_kji``)."""
    frames, series = _referenced(dataset)
    names = {int(item.ROINumber): str(item.get("ROIName", "") or f"ROI {item.ROINumber}")
             for item in dataset.get("StructureSetROISequence", [])}
    roi_frames = {int(item.ROINumber): str(item.get("ReferencedFrameOfReferenceUID", "") or "")
                  for item in dataset.get("StructureSetROISequence", [])}
    if frame_of_reference_uid:
        foreign = sorted({uid for uid in [*frames, *roi_frames.values()] if uid and uid != frame_of_reference_uid})
        if foreign:
            raise InputError(f"{where} is drawn in another Frame of Reference ({foreign[0]}) than the reference "
                             f"series ({frame_of_reference_uid})",
                             "give the CT/MR series the structure set was drawn on (its RT Referenced Series)")
    observations = {int(item.ReferencedROINumber): item for item in dataset.get("RTROIObservationsSequence", [])}
    lps_to_ijk = np.linalg.inv(_RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float))
    rois, skipped = [], []
    for roi_contour in dataset.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        by_slice: dict[int, list[np.ndarray]] = {}
        count = 0
        for contour in roi_contour.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "") != "CLOSED_PLANAR" or "ContourData" not in contour:
                continue
            lps = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            ijk = lps @ lps_to_ijk[:3, :3].T + lps_to_ijk[:3, 3]
            k = float(np.mean(ijk[:, 2]))
            k_index = int(round(k))
            if np.max(np.abs(ijk[:, 2] - k_index)) > _OFF_PLANE_VOXELS:
                raise InputError(
                    f"{where}: a contour of ROI {name!r} lies between the slices of the reference series "
                    f"(at slice {k:.2f}), so it was drawn on another series or grid",
                    "give the CT/MR series the structure set references (RT Referenced Series)")
            if not 0 <= k_index < shape_kji[0]:
                raise InputError(f"{where}: a contour of ROI {name!r} lies outside the reference series "
                                 f"(slice {k_index} of {shape_kji[0]})",
                                 "give the CT/MR series the structure set references (RT Referenced Series)")
            by_slice.setdefault(k_index, []).append(ijk[:, [1, 0]])  # (row j, column i)
            count += 1
        if not count:
            skipped.append(name)
            continue
        mask = np.zeros(shape_kji, dtype=bool)
        for k_index, outlines in by_slice.items():
            mask[k_index] = fill_contours(outlines, shape_kji[1:])
        observation = observations.get(number)
        color = tuple(int(v) for v in roi_contour.get("ROIDisplayColor", [128, 174, 128]))
        rois.append(RoiRead(number, name, color, mask,
                            str(observation.get("RTROIInterpretedType", "") or "") if observation else "",
                            _type_code(observation), count))
    return StructureSetRead(rois, frames[0] if frames else "", series, str(dataset.get("StructureSetLabel", "")),
                            skipped)
