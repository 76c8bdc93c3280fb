"""DICOMweb client: QIDO-RS queries, WADO-RS series retrieval streamed to disk, STOW-RS stores.

A thin layer over ``requests`` so that authentication (HTTP basic, bearer), TLS verification
with a custom CA bundle, timeouts, retries and every error message are ours. WADO-RS asks for
the stored transfer syntax (``transfer-syntax=*``: no server-side transcoding) and writes each
multipart part to its own file while it arrives, so memory stays flat for any series size.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
import requests

from aiportal.pacs import PacsError, PacsUnreachable
from aiportal.pacs.config import PacsEndpoint
from aiportal.pacs.model import (
    AttemptHistory,
    InstanceRecord,
    PulledSeries,
    QueryFilters,
    SeriesRecord,
    StoredObject,
    StudyRecord,
    TransientError,
    discard_staging,
    finish_staging,
    instance_from_dataset,
    series_from_dataset,
    staging_folder,
    stored_name,
    stored_object,
    study_from_dataset,
    with_retries,
)
from aiportal.progress import CancelToken, ProgressCallback, no_progress

_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_CHUNK = 1 << 20
_STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription",
                 "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances")
_INSTANCE_FIELDS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
# STOW-RS response attributes (PS3.18 Table 10.5.3-1)
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_INSTANCE = "00081155"
_STOW_BATCH_BYTES = 64 << 20


def _to_datasets(payload: list[dict]) -> list[pydicom.Dataset]:
    return [pydicom.Dataset.from_json(item) for item in payload]


class DicomWebClient:
    """One PACS's DICOMweb service, as configured in a :class:`PacsEndpoint`."""

    def __init__(self, endpoint: PacsEndpoint, session: requests.Session | None = None) -> None:
        if not endpoint.has_dicomweb:
            raise PacsError(f"PACS endpoint {endpoint.name!r} has no DICOMweb URL", "set dicomweb_url, or use DIMSE")
        self.endpoint = endpoint
        self.base = endpoint.dicomweb_url.rstrip("/")
        self.session = session or requests.Session()
        if endpoint.auth == "basic":
            self.session.auth = (endpoint.username, endpoint.secret_password())
        elif endpoint.auth == "bearer":
            self.session.headers["Authorization"] = f"Bearer {endpoint.secret_token()}"
        # passed with every request: a session-level verify loses to REQUESTS_CA_BUNDLE in requests
        self.verify: str | bool = endpoint.ca_bundle or endpoint.verify_tls

    @property
    def _name(self) -> str:
        return f"PACS {self.endpoint.name!r} ({self.base})"

    # -- requests and their errors ---------------------------------------------------------------
    def _send(self, method: str, path: str, what: str, *, ok: tuple[int, ...] = (200,), **kwargs) -> requests.Response:
        """One HTTP request; transient failures raise :class:`TransientError`, others PacsError."""
        try:
            answer = self.session.request(method, f"{self.base}{path}", timeout=self.endpoint.timeout_s,
                                          verify=self.verify, **kwargs)
        except requests.exceptions.SSLError as error:
            raise PacsError(f"TLS check of {self._name} failed for {what}: {error}",
                            "set ca_bundle to the PEM file of the hospital's certificate authority "
                            "(verify_tls false only for testing)") from error
        except requests.exceptions.Timeout as error:
            raise TransientError(PacsError(
                f"{self._name} did not answer within {self.endpoint.timeout_s:g} s for {what}",
                "check the server's load or raise timeout_s for this endpoint")) from error
        except requests.exceptions.ConnectionError as error:
            raise TransientError(PacsUnreachable(
                f"Cannot reach {self._name} for {what}: {_short(error)}",
                "check that the PACS is running and that the URL, host and port are right")) from error
        if answer.status_code in ok:
            return answer
        detail = _short_text(answer)
        if answer.status_code in (401, 403):
            credential = "token" if self.endpoint.auth == "bearer" else "username and password"
            raise PacsError(f"{self._name} refused the credentials (HTTP {answer.status_code}) for {what}",
                            f"check the {credential} of endpoint {self.endpoint.name!r}")
        failure = PacsError(f"{self._name} answered HTTP {answer.status_code} to {what}{detail}",
                            "check the request, or ask the PACS administrator")
        if answer.status_code in _TRANSIENT_HTTP:
            raise TransientError(failure)
        if answer.status_code == 404:
            raise PacsError(f"{self._name} does not hold {what} (HTTP 404)",
                            "check the UIDs with `aiportal pacs query`")
        raise failure

    def _request(self, method: str, path: str, what: str, **kwargs) -> requests.Response:
        return with_retries(lambda: self._send(method, path, what, **kwargs), self.endpoint.retries,
                            self.endpoint.backoff_s)

    def _qido(self, path: str, what: str, keys: dict[str, str], fields: Iterable[str],
              limit: int = 0) -> list[pydicom.Dataset]:
        params: list[tuple[str, str]] = list(keys.items()) + [("includefield", name) for name in fields]
        if limit:
            params.append(("limit", str(limit)))
        answer = self._request("GET", path, what, params=params, ok=(200, 204),
                               headers={"Accept": "application/dicom+json"})
        if answer.status_code == 204 or not answer.content.strip():
            return []
        try:
            return _to_datasets(answer.json())
        except (ValueError, TypeError, KeyError) as error:
            raise PacsError(f"{self._name} sent an unreadable QIDO-RS answer to {what}: {error}",
                            "check that the URL is the DICOMweb base (e.g. .../dicom-web)") from error

    # -- query -------------------------------------------------------------------------------
    def ping(self) -> None:
        self._qido("/studies", "a test query (QIDO-RS)", {}, (), limit=1)

    def _qido_described(self, path: str, what: str, keys: dict[str, str], fields: tuple[str, ...], limit: int,
                        description_key: str, description: str) -> list[pydicom.Dataset]:
        """A query with a description wildcard. Some archives never match text keys (Orthanc's
        DICOMweb plugin 1.7 finds nothing for any StudyDescription or SeriesDescription): when
        the server finds nothing, ask without the description and match it here, ignoring case."""
        found = self._qido(path, what, keys, fields, limit)
        if found or not description:
            return found
        others = {key: value for key, value in keys.items() if key != description_key}
        wanted = description.lower()
        return [ds for ds in self._qido(path, what, others, fields, 0)
                if wanted in str(ds.get(description_key, "") or "").lower()][: limit or None]

    def search_studies(self, filters: QueryFilters) -> list[StudyRecord]:
        datasets = self._qido_described("/studies", "a study query (QIDO-RS)", filters.study_keys(), _STUDY_FIELDS,
                                        filters.limit, "StudyDescription", filters.description)
        return [study_from_dataset(ds) for ds in datasets]

    def search_series(self, study_uid: str, filters: QueryFilters | None = None) -> list[SeriesRecord]:
        filters = filters or QueryFilters()
        datasets = self._qido_described(f"/studies/{study_uid}/series", f"the series of study {study_uid} (QIDO-RS)",
                                        filters.series_keys(), _SERIES_FIELDS, 0, "SeriesDescription",
                                        filters.description)
        return [series_from_dataset(ds, study_uid) for ds in datasets]

    def search_instances(self, study_uid: str, series_uid: str) -> list[InstanceRecord]:
        datasets = self._qido(f"/studies/{study_uid}/series/{series_uid}/instances",
                              f"the instances of series {series_uid} (QIDO-RS)", {}, _INSTANCE_FIELDS)
        return [instance_from_dataset(ds, study_uid, series_uid) for ds in datasets]

    def study_exists(self, study_uid: str) -> bool:
        return bool(self._qido("/studies", f"study {study_uid} (QIDO-RS)", {"StudyInstanceUID": study_uid}, ()))

    # -- retrieve ----------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, destination: Path, *,
                        expected: list[InstanceRecord] | None = None, progress: ProgressCallback = no_progress,
                        cancel: CancelToken | None = None) -> PulledSeries:
        """WADO-RS: the whole series into ``destination`` (created; must not hold files).

        Files appear in ``destination`` only when every instance the PACS listed has arrived;
        on any failure nothing is left there and the error says how far the transfer got.
        """
        destination = Path(destination)
        what = f"series {series_uid} of study {study_uid}"
        if expected is None:
            expected = self.search_instances(study_uid, series_uid)
        if not expected:
            raise self._not_found(study_uid, series_uid)
        limit = int(self.endpoint.max_retrieve_mb * 1e6)
        started = time.monotonic()

        history = AttemptHistory()

        def attempt() -> tuple[Path, list[Path], int]:
            staging = staging_folder(destination)
            try:
                files, size = self._stream_series(study_uid, series_uid, staging, len(expected), limit, what,
                                                  progress, cancel)
                return staging, files, size
            except TransientError as error:
                history.note(error)
                discard_staging(staging)
                raise
            except BaseException:
                discard_staging(staging)
                raise

        try:
            staging, files, size = with_retries(attempt, self.endpoint.retries, self.endpoint.backoff_s)
        except PacsError as error:
            raise history.explain(error) from error
        received = {path.stem for path in files}
        missing = [record.sop_instance_uid for record in expected if record.sop_instance_uid not in received]
        if missing:
            discard_staging(staging)
            raise PacsError(
                f"Partial series: {self._name} sent {len(files)} of the {len(expected)} instances it lists for "
                f"{what}; missing e.g. {', '.join(missing[:3])}. Nothing was written to {destination}",
                "the series may still be arriving on the PACS or be damaged there: retry later or ask the "
                "PACS administrator")
        finish_staging(staging, destination)
        files = [destination / path.name for path in files]
        notes = []
        if len(files) > len(expected):
            notes.append(f"{len(files) - len(expected)} instance(s) arrived on the PACS during the pull")
        return PulledSeries(self.endpoint.name, "DICOMweb", study_uid, series_uid, destination, sorted(files), size,
                            time.monotonic() - started, notes)

    def _not_found(self, study_uid: str, series_uid: str) -> PacsError:
        if not self.study_exists(study_uid):
            return PacsError(f"Study {study_uid} is not on {self._name}",
                             "check the StudyInstanceUID with `aiportal pacs query`")
        listing = ", ".join(f"{s.series_uid} ({s.modality} '{s.description}')" for s in self.search_series(study_uid))
        return PacsError(f"Series {series_uid} is not in study {study_uid} on {self._name}",
                         f"choose one of: {listing or 'none (the study is empty)'}")

    def _stream_series(self, study_uid: str, series_uid: str, staging: Path, expected_count: int, limit: int,
                       what: str, progress: ProgressCallback, cancel: CancelToken | None) -> tuple[list[Path], int]:
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        answer = self._send("GET", f"/studies/{study_uid}/series/{series_uid}", f"{what} (WADO-RS)",
                            headers={"Accept": accept}, stream=True)
        files: list[Path] = []
        received = 0
        try:
            boundary = _boundary(answer.headers.get("Content-Type", ""), self._name, what)
            parts = _MultipartFiles(boundary, staging)
            for chunk in answer.iter_content(chunk_size=_CHUNK):
                if cancel is not None:
                    cancel.check(f"retrieving {what}")
                received += len(chunk)
                if received > limit:
                    raise PacsError(
                        f"Retrieving {what} from {self._name} passed the size limit of "
                        f"{self.endpoint.max_retrieve_mb:g} MB; nothing was kept",
                        f"raise max_retrieve_mb of endpoint {self.endpoint.name!r} if the series is meant to be "
                        "this large")
                for path in parts.feed(chunk):
                    files.append(path)
                    progress(min(len(files) / expected_count, 1.0),
                             f"received {len(files)}/{expected_count} instances ({received / 1e6:.1f} MB)")
            if not parts.finished:
                raise TransientError(PacsError(
                    f"{self._name} ended the transfer of {what} early, after {len(files)} of {expected_count} "
                    "instances; nothing was kept", "retry; if it persists, check the PACS log"))
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
            raise TransientError(PacsError(
                f"Lost the connection to {self._name} while retrieving {what}, after {len(files)} of "
                f"{expected_count} instances ({received / 1e6:.1f} MB); nothing was kept",
                "check that the PACS is running, then retry")) from error
        finally:
            answer.close()
        return [_named_by_uid(path, self._name, what) for path in files], received

    # -- store -------------------------------------------------------------------------------
    def store(self, paths: list[Path], progress: ProgressCallback = no_progress) -> list[StoredObject]:
        """STOW-RS the files (batched); raises naming the first object the PACS refused."""
        objects = [stored_object(Path(path)) for path in paths]
        done = 0
        for study_uid, batch in _batches(objects):
            what = f"storing {len(batch)} object(s) of study {study_uid} (STOW-RS)"
            boundary = uuid.uuid4().hex
            answer = self._request(
                "POST", f"/studies/{study_uid}", what, ok=(200, 202, 409),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                         "Accept": "application/dicom+json"},
                data=b"".join(_stow_body(batch, boundary)))
            self._check_stow_answer(answer, batch)
            done += len(batch)
            progress(done / len(objects), f"stored {done}/{len(objects)} objects")
        return objects

    def _check_stow_answer(self, answer: requests.Response, batch: list[StoredObject]) -> None:
        try:
            body = answer.json() if answer.content.strip() else {}
        except ValueError:
            body = {}
        failed = body.get(_FAILED_SOP_SEQUENCE, {}).get("Value", []) if isinstance(body, dict) else []
        by_uid = {item.sop_instance_uid: item for item in batch}
        if failed:
            first = failed[0]
            uid = (first.get(_REFERENCED_SOP_INSTANCE, {}).get("Value") or ["?"])[0]
            reason = (first.get(_FAILURE_REASON, {}).get("Value") or ["?"])[0]
            item = by_uid.get(uid)
            named = f"{_object_name(item)}" if item else f"object {uid}"
            raise PacsError(f"{self._name} refused {named}: STOW-RS failure reason {_stow_reason(reason)} "
                            f"({len(failed)} of {len(batch)} refused)",
                            _stow_fix(reason, item))
        if answer.status_code == 409:
            raise PacsError(f"{self._name} refused the store of {len(batch)} object(s) (HTTP 409)",
                            "ask the PACS administrator which SOP classes it accepts")
        referenced = body.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", []) if isinstance(body, dict) else []
        confirmed = {(item.get(_REFERENCED_SOP_INSTANCE, {}).get("Value") or [""])[0] for item in referenced}
        if referenced and not set(by_uid) <= confirmed:
            missing = sorted(set(by_uid) - confirmed)
            raise PacsError(f"{self._name} did not confirm {_object_name(by_uid[missing[0]])} in its STOW-RS answer",
                            "retry the push; if it persists, ask the PACS administrator")

    def missing_instances(self, objects: list[StoredObject]) -> list[StoredObject]:
        """Which of ``objects`` a QIDO-RS query does not find (the verification after a push)."""
        missing = []
        by_series: dict[tuple[str, str], list[StoredObject]] = {}
        for item in objects:
            by_series.setdefault((item.study_uid, item.series_uid), []).append(item)
        for (study_uid, series_uid), items in by_series.items():
            # the default return keys hold the SOP Instance UID: no extra fields, the cheapest query
            path = f"/studies/{study_uid}/series/{series_uid}/instances"
            keys = {"SOPInstanceUID": items[0].sop_instance_uid} if len(items) == 1 else {}
            datasets = self._qido(path, f"the pushed instances of series {series_uid} (QIDO-RS)", keys, ())
            found = {str(ds.get("SOPInstanceUID", "")) for ds in datasets}
            missing += [item for item in items if item.sop_instance_uid not in found]
        return missing


# ---------------------------------------------------------------------------------------------
# Multipart helpers


class _MultipartFiles:
    """Incremental multipart/related parser writing each part's body to its own file."""

    def __init__(self, boundary: bytes, folder: Path) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.folder = folder
        self.buffer = bytearray(b"\r\n")  # so that a leading "--boundary" matches the delimiter too
        self.state = "preamble"
        self.stream = None
        self.path: Path | None = None
        self.count = 0
        self.finished = False

    def feed(self, chunk: bytes) -> Iterator[Path]:
        self.buffer += chunk
        while True:
            if self.state in ("preamble", "after-body"):
                index = self.buffer.find(self.delimiter)
                if index < 0:
                    keep = len(self.delimiter)
                    if len(self.buffer) > keep:
                        del self.buffer[: len(self.buffer) - keep]
                    return
                if len(self.buffer) < index + len(self.delimiter) + 2:
                    return
                tail = bytes(self.buffer[index + len(self.delimiter): index + len(self.delimiter) + 2])
                if tail == b"--":
                    self.finished, self.state = True, "end"
                    self.buffer.clear()
                    return
                del self.buffer[: index + len(self.delimiter)]
                self.state = "headers"
            if self.state == "headers":
                index = self.buffer.find(b"\r\n\r\n")
                if index < 0:
                    return
                del self.buffer[: index + 4]  # part headers: only application/dicom is asked for
                self.count += 1
                path = self.folder / f"part-{self.count:06d}.dcm"
                self.stream = open(path, "wb")  # noqa: SIM115 - closed when the part ends
                self.path = path
                self.state = "body"
            if self.state == "body":
                index = self.buffer.find(self.delimiter)
                if index < 0:
                    safe = len(self.buffer) - len(self.delimiter)
                    if safe > 0:
                        self.stream.write(self.buffer[:safe])
                        del self.buffer[:safe]
                    return
                self.stream.write(self.buffer[:index])
                self.stream.close()
                del self.buffer[:index]
                self.state = "after-body"
                yield self.path
            if self.state == "end":
                return


def _named_by_uid(path: Path, name: str, what: str) -> Path:
    """Rename a received part to ``<SOPInstanceUID>.dcm``."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        if not str(header.get("SOPInstanceUID", "") or ""):
            raise ValueError("no SOP Instance UID")
    except Exception as error:  # pydicom raises many types on garbage
        raise PacsError(f"{name} sent a part that is not a DICOM instance ({error}) for {what}; nothing was kept",
                        "check that the PACS stores valid DICOM, or ask its administrator") from error
    target = path.with_name(f"{header.SOPInstanceUID}.dcm")
    path.replace(target)
    return target


def _boundary(content_type: str, name: str, what: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/related") or not match:
        raise PacsError(f"{name} answered {what} with {content_type or 'no content type'}, not multipart DICOM",
                        "check that the URL is the DICOMweb base (e.g. .../dicom-web)")
    return match.group(1).encode()


def _batches(objects: list[StoredObject]) -> Iterator[tuple[str, list[StoredObject]]]:
    """Objects grouped by study, in batches of at most ``_STOW_BATCH_BYTES``."""
    by_study: dict[str, list[StoredObject]] = {}
    for item in objects:
        by_study.setdefault(item.study_uid, []).append(item)
    for study_uid, items in by_study.items():
        batch, size = [], 0
        for item in items:
            item_size = item.path.stat().st_size
            if batch and size + item_size > _STOW_BATCH_BYTES:
                yield study_uid, batch
                batch, size = [], 0
            batch.append(item)
            size += item_size
        if batch:
            yield study_uid, batch


def _stow_body(batch: list[StoredObject], boundary: str) -> Iterator[bytes]:
    for item in batch:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield item.path.read_bytes()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


_STOW_REASONS = {0x0110: "0110H processing failure", 0x0122: "0122H SOP class not supported",
                 0xA700: "A700H out of resources", 0xA900: "A900H data set does not match SOP class",
                 0xC000: "C000H cannot understand", 0x0124: "0124H refused: not authorized"}


def _stow_reason(code) -> str:
    try:
        return _STOW_REASONS.get(int(code), f"{int(code):04X}H")
    except (TypeError, ValueError):
        return str(code)


def _stow_fix(code, item: StoredObject | None) -> str:
    kept = f"; the file stays at {item.path}" if item else ""
    try:
        value = int(code)
    except (TypeError, ValueError):
        value = 0
    if value in (0x0122, 0x0110):
        return ("the PACS may not accept this SOP class: export another type (e.g. --seg-type binary) or ask the "
                f"PACS administrator to enable it{kept}")
    return f"check the PACS log{kept}"


def _object_name(item: StoredObject) -> str:
    return stored_name(item)


def _short(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset",
                   "Remote end closed"):
        if marker in text:
            return marker.lower()
    return text[:160]


def _short_text(answer: requests.Response) -> str:
    try:
        text = answer.text.strip()
    except Exception:  # undecodable body: the status says enough
        return ""
    if not text:
        return ""
    try:
        data = json.loads(text)
        text = data.get("Details") or data.get("Message") or text if isinstance(data, dict) else text
    except ValueError:
        pass
    return f": {str(text)[:200]}"
