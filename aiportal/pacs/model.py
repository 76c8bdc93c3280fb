"""What both protocols return and share: query filters, study/series/instance records, transfer
results, and the retry-with-backoff rule for transient errors."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom

from aiportal.pacs import PacsError

T = TypeVar("T")


@dataclass(frozen=True)
class QueryFilters:
    """Study/series search keys; empty ones are not sent. Dates are YYYYMMDD."""

    patient_id: str = ""
    accession_number: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    description: str = ""  # matched anywhere in the study / series description (wildcards)
    study_uid: str = ""
    limit: int = 0  # 0: no limit

    def date_range(self) -> str:
        for value in (self.date_from, self.date_to):
            if value and not re.fullmatch(r"\d{8}", value):
                raise PacsError(f"date {value!r} is not YYYYMMDD", "write dates as e.g. 20240131")
        if not (self.date_from or self.date_to):
            return ""
        if self.date_from and self.date_to == self.date_from:
            return self.date_from
        return f"{self.date_from}-{self.date_to}"

    def study_keys(self) -> dict[str, str]:
        """DICOM keyword → matching value at study level (QIDO-RS and C-FIND alike)."""
        keys = {"PatientID": self.patient_id, "AccessionNumber": self.accession_number,
                "StudyDate": self.date_range(), "ModalitiesInStudy": self.modality,
                "StudyDescription": f"*{self.description}*" if self.description else "",
                "StudyInstanceUID": self.study_uid}
        return {key: value for key, value in keys.items() if value}

    def series_keys(self) -> dict[str, str]:
        keys = {"Modality": self.modality,
                "SeriesDescription": f"*{self.description}*" if self.description else ""}
        return {key: value for key, value in keys.items() if value}


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession_number: str
    description: str
    modalities: tuple[str, ...]
    number_of_series: int | None
    number_of_instances: int | None


@dataclass(frozen=True)
class SeriesRecord:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    number_of_instances: int | None


@dataclass(frozen=True)
class InstanceRecord:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None = None


@dataclass
class PulledSeries:
    """A series retrieved to a local folder (one file per instance, named by SOPInstanceUID)."""

    endpoint: str
    protocol: str  # "DICOMweb" | "C-GET" | "C-MOVE"
    study_uid: str
    series_uid: str
    folder: Path
    files: list[Path]
    bytes_received: int
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class StoredObject:
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str


@dataclass
class PushReport:
    """Objects stored and then found again on the PACS (``verified``)."""

    endpoint: str
    protocol: str
    objects: list[StoredObject]
    verified: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


def stored_name(item: StoredObject) -> str:
    """How a pushed object is named in messages: SOP class name, SOPInstanceUID, local file."""
    sop_class = pydicom.uid.UID(item.sop_class_uid)
    name = sop_class.name if sop_class.is_valid and sop_class.name != item.sop_class_uid else (
        f"SOP class {item.sop_class_uid}")
    return f"{name} {item.sop_instance_uid} ({item.path})"


def stored_object(path: Path) -> StoredObject:
    """The identity of a local DICOM file that is about to be pushed."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types for non-DICOM files
        raise PacsError(f"{path} is not a readable DICOM file ({type(error).__name__}: {error})",
                        "push DICOM files (SEG, SR, images) only") from error
    values = [str(header.get(key, "") or "") for key in ("SOPInstanceUID", "SOPClassUID",
                                                          "StudyInstanceUID", "SeriesInstanceUID")]
    if not all(values):
        raise PacsError(f"{path} lacks SOP Instance, SOP Class, Study or Series UID", "push complete DICOM objects")
    return StoredObject(Path(path), *values)


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def study_from_dataset(ds: pydicom.Dataset) -> StudyRecord:
    modalities = ds.get("ModalitiesInStudy", "")
    modalities = tuple(str(m) for m in modalities) if isinstance(modalities, list | pydicom.multival.MultiValue) else (
        (str(modalities),) if modalities else ())
    return StudyRecord(str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", "") or ""),
                       str(ds.get("PatientName", "") or ""), str(ds.get("StudyDate", "") or ""),
                       str(ds.get("AccessionNumber", "") or ""), str(ds.get("StudyDescription", "") or ""),
                       modalities, _int(ds.get("NumberOfStudyRelatedSeries")),
                       _int(ds.get("NumberOfStudyRelatedInstances")))


def series_from_dataset(ds: pydicom.Dataset, study_uid: str) -> SeriesRecord:
    return SeriesRecord(str(ds.get("StudyInstanceUID", "") or study_uid), str(ds.get("SeriesInstanceUID", "")),
                        str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                        _int(ds.get("SeriesNumber")), _int(ds.get("NumberOfSeriesRelatedInstances")))


def instance_from_dataset(ds: pydicom.Dataset, study_uid: str, series_uid: str) -> InstanceRecord:
    return InstanceRecord(str(ds.get("StudyInstanceUID", "") or study_uid),
                          str(ds.get("SeriesInstanceUID", "") or series_uid),
                          str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", "") or ""),
                          _int(ds.get("InstanceNumber")))


class TransientError(Exception):
    """An error worth retrying (connection lost, server busy); wraps the final PacsError text."""

    def __init__(self, error: PacsError):
        super().__init__(str(error))
        self.error = error


def with_retries(action: Callable[[], T], attempts: int, backoff_s: float,
                 on_retry: Callable[[int, PacsError], None] | None = None) -> T:
    """Run ``action``; on :class:`TransientError` wait ``backoff_s``, 2x, 4x ... and try again."""
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TransientError as transient:
            if attempt == attempts:
                raise transient.error from transient
            if on_retry is not None:
                on_retry(attempt, transient.error)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class AttemptHistory:
    """Remembers why the first attempt of a retried transfer failed, so the final error tells how
    far the transfer got (e.g. "lost the connection after 12 of 60 instances") and not only why
    the last retry failed (e.g. "cannot reach")."""

    def __init__(self) -> None:
        self.first: PacsError | None = None

    def note(self, error: TransientError) -> None:
        if self.first is None:
            self.first = error.error

    def explain(self, final: PacsError) -> PacsError:
        if self.first is None or self.first.message == final.message:
            return final
        combined = type(final)(f"{self.first.message}; retrying: {final.message}", final.fix)
        return combined


def staging_folder(destination: Path) -> Path:
    """A fresh folder beside ``destination`` that becomes it only when a pull is complete."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise PacsError(f"{destination} already exists and is not an empty folder",
                        "choose a new folder for the retrieved series")
    staging = destination.with_name(f".{destination.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)  # a previous interrupted pull
    staging.mkdir(parents=True)
    return staging


def finish_staging(staging: Path, destination: Path) -> None:
    if destination.exists():
        destination.rmdir()  # checked empty by staging_folder
    staging.replace(destination)


def discard_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
