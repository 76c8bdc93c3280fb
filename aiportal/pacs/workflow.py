"""PACS operations every face calls: query, pull (into a folder or the scene), push with verification.

Protocol ``auto`` uses DICOMweb when the endpoint has it and falls back to DIMSE when the
DICOMweb service cannot be reached at all; ``dicomweb`` / ``dimse`` force one. A push is only
reported as done after a query found every pushed instance on the PACS; when it fails, the
error says where the local files are (they are never removed by a push).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiportal.io.dicom_series import NON_IMAGE_MODALITIES
from aiportal.pacs import PacsError, PacsUnreachable
from aiportal.pacs.config import PROTOCOLS, PacsEndpoint, Protocol
from aiportal.pacs.model import (
    PulledSeries,
    PushReport,
    QueryFilters,
    SeriesRecord,
    StoredObject,
    StudyRecord,
    stored_name,
)
from aiportal.progress import CancelToken, ProgressCallback, no_progress

T = TypeVar("T")
# A PACS may index a stored object a moment after acknowledging it: query again before failing.
_VERIFY_ATTEMPTS = 4
_VERIFY_WAIT_S = 0.5


def _clients(endpoint: PacsEndpoint, protocol: Protocol) -> list:
    from aiportal.pacs.dicomweb import DicomWebClient
    from aiportal.pacs.dimse import DimseClient

    if protocol not in PROTOCOLS:
        raise PacsError(f"Unknown protocol {protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
    endpoint.validate()
    clients = []
    if protocol in ("auto", "dicomweb") and endpoint.has_dicomweb:
        clients.append(DicomWebClient(endpoint))
    if protocol in ("auto", "dimse") and endpoint.has_dimse:
        clients.append(DimseClient(endpoint))
    if not clients:
        raise PacsError(f"PACS endpoint {endpoint.name!r} has no {protocol} service configured",
                        "configure it, or choose another protocol")
    return clients


def _with_fallback(endpoint: PacsEndpoint, protocol: Protocol, operation: Callable[[object], T],
                   notes: list[str] | None = None) -> T:
    """``operation`` on the first client; the next one only when the first could not be reached."""
    clients = _clients(endpoint, protocol)
    for index, client in enumerate(clients):
        try:
            return operation(client)
        except PacsUnreachable as error:
            if index == len(clients) - 1:
                raise
            if notes is not None:
                notes.append(f"DICOMweb unreachable ({error.message}); used DIMSE instead")
    raise AssertionError("unreachable")


def query_studies(endpoint: PacsEndpoint, filters: QueryFilters, protocol: Protocol = "auto") -> list[StudyRecord]:
    return _with_fallback(endpoint, protocol, lambda client: client.search_studies(filters))


def query_series(endpoint: PacsEndpoint, study_uid: str, filters: QueryFilters | None = None,
                 protocol: Protocol = "auto") -> list[SeriesRecord]:
    def run(client) -> list[SeriesRecord]:
        found = client.search_series(study_uid, filters)
        if not found and not client.study_exists(study_uid):
            raise PacsError(f"Study {study_uid} is not on PACS {endpoint.name!r}",
                            "check the StudyInstanceUID with `aiportal pacs query`")
        return found

    return _with_fallback(endpoint, protocol, run)


def choose_image_series(endpoint: PacsEndpoint, study_uid: str, series: list[SeriesRecord]) -> SeriesRecord:
    """The one image series of a study (SEG, SR and other non-image series are not candidates)."""
    images = [s for s in series if s.modality.upper() not in NON_IMAGE_MODALITIES]
    if len(images) == 1:
        return images[0]
    listing = "; ".join(f"{s.series_uid} ({s.modality} #{s.series_number} '{s.description}', "
                        f"{s.number_of_instances} instances)" for s in images)
    if not images:
        raise PacsError(f"Study {study_uid} on PACS {endpoint.name!r} holds no image series",
                        "choose a study with a CT or MR series")
    raise PacsError(f"Study {study_uid} on PACS {endpoint.name!r} holds {len(images)} image series: {listing}",
                    "pass --series UID to choose one")


def pull_series(endpoint: PacsEndpoint, study_uid: str, series_uid: str | None, destination: Path, *,
                protocol: Protocol = "auto", progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None) -> PulledSeries:
    """Retrieve one series (the study's only image series when ``series_uid`` is None) into
    ``destination``, a new folder; complete or not at all."""
    notes: list[str] = []

    def run(client) -> PulledSeries:
        chosen = series_uid
        if not chosen:
            found = client.search_series(study_uid)
            if not found and not client.study_exists(study_uid):
                raise PacsError(f"Study {study_uid} is not on PACS {endpoint.name!r}",
                                "check the StudyInstanceUID with `aiportal pacs query`")
            chosen = choose_image_series(endpoint, study_uid, found).series_uid
        progress(0.0, f"listing series {chosen}")
        expected = client.search_instances(study_uid, chosen)
        return client.retrieve_series(study_uid, chosen, destination, expected=expected, progress=progress,
                                      cancel=cancel)

    pulled = _with_fallback(endpoint, protocol, run, notes)
    pulled.notes[:0] = notes
    return pulled


def load_pulled(pulled: PulledSeries, runtime=None, progress: ProgressCallback = no_progress):
    """Load a pulled series into the scene with the project's DICOM loader (a ``LoadedVolume``)."""
    from aiportal.io.volumes import load_volume

    return load_volume(pulled.folder, runtime, series_uid=pulled.series_uid, progress=progress)


def push_files(endpoint: PacsEndpoint, files: list[Path], *, protocol: Protocol = "auto",
               progress: ProgressCallback = no_progress) -> PushReport:
    """Store ``files`` and confirm with a query that every instance arrived.

    Raises :class:`PacsError` naming the PACS and the object, and saying that the local files stay
    where they are, when storing or the verification fails.
    """
    files = [Path(path) for path in files]
    if not files:
        raise PacsError(f"Nothing to push to PACS {endpoint.name!r}", "give the SEG/SR files to push")
    started = time.monotonic()
    notes: list[str] = []
    used: list[str] = []

    def run(client) -> list[StoredObject]:
        used.append("DICOMweb" if client.__class__.__name__ == "DicomWebClient" else "DIMSE")
        objects = client.store(files, progress)
        for attempt in range(_VERIFY_ATTEMPTS):
            missing = client.missing_instances(objects)
            if not missing:
                return objects
            if attempt < _VERIFY_ATTEMPTS - 1:
                time.sleep(_VERIFY_WAIT_S * 2 ** attempt)
        first = missing[0]
        raise PacsError(f"PACS {endpoint.name!r} acknowledged the push but a query does not find {len(missing)} of "
                        f"{len(objects)} object(s), e.g. {stored_name(first)}: the PACS dropped it after accepting "
                        "it (does it accept this SOP class?)",
                        "ask the PACS administrator which SOP classes it keeps (e.g. push --seg-type binary SEGs), "
                        "then push again")

    try:
        objects = _with_fallback(endpoint, protocol, run, notes)
    except PacsError as error:
        folders = sorted({str(path.parent) for path in files})
        raise PacsError(f"{error.message}. Push not done: the {len(files)} local file(s) stay in "
                        f"{', '.join(folders)}", error.fix) from error
    return PushReport(endpoint.name, used[-1], objects, True, time.monotonic() - started, notes)


def audit_push(report: PushReport, *, run_ids: list[str], study_uid: str, series_uid: str, user: str,
               formats: list[str]) -> None:
    """An ``export`` record with destination ``pacs`` naming every pushed object by its UIDs."""
    from aiportal.audit import AuditLog
    from aiportal.settings import Settings

    AuditLog(Settings.from_environment().audit_log).append(
        "export", run_id=run_ids[0] if len(run_ids) == 1 else "", run_ids=run_ids, destination="pacs",
        pacs=report.endpoint, protocol=report.protocol, study_uid=study_uid, series_uid=series_uid, user=user,
        formats=formats, verified=report.verified,
        pushed=[{"sop_instance_uid": item.sop_instance_uid, "sop_class_uid": item.sop_class_uid,
                 "series_uid": item.series_uid, "path": str(item.path)} for item in report.objects])
