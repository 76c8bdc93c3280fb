"""What a DICOM SEG/SR export references: the source image headers, in the volume's slice order.

DICOM SEG and SR only mean something next to the images they were made from, so every export
starts here. :func:`export_source` refuses what would give an invalid or mis-registered object
(NIfTI/NRRD input, empty UIDs, headers out of the volume's k order) and can, on request, give an
anonymised series the UIDs it lacks by writing a corrected copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from aiportal.errors import InputError
from aiportal.export.dicom_objects import copy_patient_and_study, drop_empty_copied_sequences  # noqa: F401 (re-exported)
from aiportal.io.dicom_series import SourceSeries
from aiportal.io.geometry import RegularGrid
from aiportal.io.volumes import ijk_to_ras_matrix

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# IPP/IOP are decimal strings with ~6 significant digits; the volume grid was computed from them.
_POSITION_TOLERANCE_MM = 0.01
_ORIENTATION_TOLERANCE = 1e-4
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass
class ExportSource:
    """The source images a SEG/SR references: headers (no pixels) in the volume's k order."""

    datasets: list[pydicom.Dataset]
    files: list[Path]
    volume_node_id: str  # the volume whose k axis these headers were checked against
    changes: list[str] = field(default_factory=list)  # what was filled in; empty when used as is
    corrected_folder: Path | None = None  # where the corrected copy was written, if one was
    # The regular grid the volume was resampled onto (tilted / unevenly spaced series): the SEG's
    # labels are then mapped back onto the acquired slices, which ``datasets`` describe.
    regular_grid: RegularGrid | None = None

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", "") or "")

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def _input_name(volume_node) -> str:
    storage = volume_node.GetStorageNode()
    file_name = storage.GetFileName() if storage is not None else None
    return file_name or volume_node.GetName()


def _missing_uids(datasets: list[pydicom.Dataset]) -> list[str]:
    return [keyword for keyword in _REQUIRED_UIDS if any(not str(ds.get(keyword, "") or "") for ds in datasets)]


def _refuse_transformed(volume_node) -> None:
    if volume_node.GetParentTransformNode() is not None:
        raise InputError(
            f"Volume {volume_node.GetName()} is under a transform, so it no longer lies where its DICOM images are",
            "harden or remove the transform, or export the segmentation of the untransformed volume",
        )


def _check_registration(datasets: list[pydicom.Dataset], volume_node, where: str) -> None:
    """Refuse unless header k lies at voxel (0, 0, k) of the volume (never a mis-registered SEG)."""
    _refuse_transformed(volume_node)
    columns, rows, slices = volume_node.GetImageData().GetDimensions()
    if len(datasets) != slices or any((ds.Rows, ds.Columns) != (rows, columns) for ds in datasets):
        raise InputError(
            f"Volume {volume_node.GetName()} ({columns}x{rows}x{slices}) is not the grid of the DICOM series in "
            f"{where} ({len(datasets)} images)",
            "export the segmentation of the volume loaded from that series (resampled volumes cannot be referenced)",
        )
    ijk_to_lps = _RAS_TO_LPS @ ijk_to_ras_matrix(volume_node)
    row_cosine = ijk_to_lps[:3, 0] / np.linalg.norm(ijk_to_lps[:3, 0])
    column_cosine = ijk_to_lps[:3, 1] / np.linalg.norm(ijk_to_lps[:3, 1])
    for k, ds in enumerate(datasets):
        expected = ijk_to_lps @ np.array([0.0, 0.0, k, 1.0])
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        if (np.abs(position - expected[:3]).max() > _POSITION_TOLERANCE_MM
                or np.abs(orientation - np.concatenate([row_cosine, column_cosine])).max() > _ORIENTATION_TOLERANCE):
            raise InputError(
                f"DICOM image {k + 1} of the series in {where} is not at slice {k} of volume {volume_node.GetName()} "
                f"(position {position.round(3).tolist()} mm, volume says {expected[:3].round(3).tolist()} mm)",
                "load the volume from this series with the portal's DICOM loader, which sorts slices by position",
            )


def _check_regular_grid(grid: RegularGrid, volume_node, where: str) -> None:
    """Refuse unless the volume is the regular grid the series was resampled onto."""
    _refuse_transformed(volume_node)
    dimensions = volume_node.GetImageData().GetDimensions()
    matrix = _RAS_TO_LPS @ ijk_to_ras_matrix(volume_node)
    if tuple(dimensions) != tuple(grid.shape[::-1]) or np.abs(matrix - grid.ijk_to_lps).max() > _POSITION_TOLERANCE_MM:
        raise InputError(
            f"Volume {volume_node.GetName()} is not the regular grid the tilted or unevenly spaced series in {where} "
            "was resampled onto",
            "export the segmentation of the volume loaded from that series",
        )


def _new_uids(headers: list[pydicom.Dataset], missing: list[str], where: str) -> tuple[list[dict[str, str]], list[str]]:
    """The UIDs to fill in, per image, and a note per attribute.

    SOPClassUID and SOPInstanceUID come from the file meta when it has them (they name the same
    object). The others are derived from the images (file meta UIDs and positions), so that a
    repeated export of the same files gives the same UIDs (no duplicate studies in the PACS); each
    series gets its own study, since nothing safe says which anonymised series belong together.
    """
    seed = ["aiportal-corrected-source", str(headers[0].get("FrameOfReferenceUID", ""))]
    for ds in headers:
        seed += [str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "")),
                 str(ds.get("ImagePositionPatient", ""))]
    shared = {keyword: generate_uid(entropy_srcs=[*seed, keyword])
              for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}
    assigned: list[dict[str, str]] = [{} for _ in headers]
    notes = []
    for keyword in missing:
        if keyword in shared:
            for values in assigned:
                values[keyword] = shared[keyword]
            notes.append(f"{keyword} was empty: set to new UID {shared[keyword]}")
            continue
        meta_keyword = "MediaStorage" + keyword
        generated = 0
        for k, (ds, values) in enumerate(zip(headers, assigned, strict=True)):
            if str(ds.get(keyword, "") or ""):
                continue
            meta_value = str(getattr(ds, "file_meta", {}).get(meta_keyword, "") or "")
            if meta_value:
                values[keyword] = meta_value
            elif keyword == "SOPInstanceUID":
                values[keyword] = generate_uid(entropy_srcs=[*seed, keyword, str(k)])
                generated += 1
            else:
                raise InputError(
                    f"DICOM image {k + 1} of the series in {where} has neither SOPClassUID nor "
                    "MediaStorageSOPClassUID, so what kind of image it is is unknown",
                    "export the series again from the scanner or PACS with its UIDs",
                )
        notes.append(f"{keyword} was empty: taken from the file meta ({meta_keyword})"
                     + (f", newly generated for {generated} images without one" if generated else ""))
    return assigned, notes


def _write_corrected_copy(
    source: SourceSeries, volume_node_id: str, missing: list[str], folder: Path, where: str
) -> ExportSource:
    assigned, changes = _new_uids(source.headers, missing, where)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path, values in zip(source.files, assigned, strict=True):  # one file at a time: bounded memory
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(copy, enforce_file_format=True)  # pixel data (also compressed) is written as read
        files.append(copy)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    changes.append(f"wrote a corrected copy of the {len(files)} source images to {folder}")
    return ExportSource(datasets=headers, files=files, volume_node_id=volume_node_id, changes=changes,
                        corrected_folder=folder)


def export_source(
    loaded_source: SourceSeries | None,
    volume_node,
    *,
    assign_missing_uids: bool = False,
    corrected_copy_folder: Path | None = None,
) -> ExportSource:
    """The source images a DICOM SEG/SR of ``volume_node`` must reference, sorted like its k axis.

    ``loaded_source`` is :attr:`LoadedVolume.source`; None (NIfTI/NRRD input) is refused, since a
    SEG/SR has to reference the DICOM images it was made from.

    Anonymised series often lack Study/Series/SOP Class/SOP Instance/Frame of Reference UIDs. They are
    refused unless ``assign_missing_uids`` is set: then the missing UIDs are filled (SOP Class and
    SOP Instance UID from the file meta when present, the rest newly generated, the same for the
    same files) and a corrected copy of the series is written to ``corrected_copy_folder``: the
    same files with pixel data and every other attribute untouched, only the empty UIDs filled.
    The export then references that copy, which must be sent to the PACS together with the SEG/SR.
    :attr:`ExportSource.changes` lists what was changed.
    """
    if loaded_source is None:
        raise InputError(
            f"{_input_name(volume_node)} is not a DICOM series: a DICOM SEG/SR/RTSTRUCT must reference the DICOM "
            "images it was made from",
            "load the DICOM series instead of the NIfTI/NRRD file and segment that, or save as .seg.nrrd/NIfTI",
        )
    where = str(loaded_source.files[0].parent) if loaded_source.files else volume_node.GetName()
    if any(frame is not None for frame in loaded_source.frames):
        raise InputError(
            f"The series in {where} is an enhanced multi-frame image; DICOM SEG export supports single-frame "
            "series only",
            "convert the series to single-frame images, or save the segmentation as .seg.nrrd",
        )
    datasets = list(loaded_source.headers)  # never edited: UIDs are only filled in the corrected copy
    grid = loaded_source.regular_grid
    if grid is not None:
        _check_regular_grid(grid, volume_node, where)
    else:
        _check_registration(datasets, volume_node, where)
    mapped = ([f"DICOM SEG/RTSTRUCT: the labels on the regular grid are mapped back (nearest neighbour) onto the "
               f"{len(datasets)} acquired slices it references"] if grid is not None else [])
    missing = _missing_uids(datasets)
    if not missing:
        return ExportSource(datasets=datasets, files=list(loaded_source.files), volume_node_id=volume_node.GetID(),
                            changes=mapped, regular_grid=grid)
    if not assign_missing_uids:
        raise InputError(
            f"The DICOM series in {where} has empty {', '.join(missing)} (anonymised?), so a SEG/SR/RTSTRUCT cannot "
            "reference it",
            "export it again from the PACS with its UIDs, or allow assigning new UIDs (--assign-uids; a corrected "
            "copy of the series is written and must be sent together with the SEG/SR/RTSTRUCT)",
        )
    if corrected_copy_folder is None:
        raise ValueError("assign_missing_uids needs corrected_copy_folder: the copy with the new UIDs goes there")
    corrected = _write_corrected_copy(loaded_source, volume_node.GetID(), missing, Path(corrected_copy_folder), where)
    corrected.regular_grid = grid
    corrected.changes = mapped + corrected.changes
    return corrected
