"""DIMSE client (pynetdicom): C-ECHO, C-FIND, C-GET / C-MOVE retrieval to disk, C-STORE.

The fallback for archives without DICOMweb. Received instances are written as the bytes the
PACS sent (no decode and re-encode), into a staging folder that becomes the destination only
when every instance the C-FIND listed has arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

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
    stored_object,
    study_from_dataset,
    with_retries,
)
from aiportal.progress import CancelToken, ProgressCallback, no_progress

_PENDING = (0xFF00, 0xFF01)
_STORE_WARNINGS = (0xB000, 0xB006, 0xB007)
_STORE_FAILURES = {0xA700: "out of resources", 0xA900: "data set does not match SOP class",
                   0xC000: "cannot understand", 0x0122: "SOP class not supported", 0x0124: "not authorized",
                   0x0110: "processing failure"}
_GET_SYNTAX_GROUPS = [[ExplicitVRLittleEndian, ImplicitVRLittleEndian]] + [
    [syntax] for syntax in ALL_TRANSFER_SYNTAXES
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and UID(syntax).is_compressed]
_STUDY_FIELDS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_FIELDS = ("Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")


def _sop_name(uid: str) -> str:
    value = UID(uid)
    return value.name if value.is_valid and value.name != uid else uid


class DimseClient:
    """One PACS's DIMSE service, as configured in a :class:`PacsEndpoint`."""

    def __init__(self, endpoint: PacsEndpoint) -> None:
        if endpoint.dimse is None:
            raise PacsError(f"PACS endpoint {endpoint.name!r} has no DIMSE peer", "set dimse, or use DICOMweb")
        self.endpoint = endpoint
        self.peer = endpoint.dimse

    @property
    def _name(self) -> str:
        return f"PACS {self.endpoint.name!r} ({self.peer.ae_title}@{self.peer.host}:{self.peer.port})"

    def _ae(self) -> AE:
        ae = AE(ae_title=self.peer.our_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.endpoint.timeout_s
        ae.connection_timeout = self.endpoint.timeout_s
        return ae

    @contextmanager
    def _association(self, ae: AE, what: str, **kwargs) -> Iterator[Association]:
        assoc = ae.associate(self.peer.host, int(self.peer.port), ae_title=self.peer.ae_title, **kwargs)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsError(f"{self._name} rejected the association for {what}",
                                f"check the PACS's AE title ({self.peer.ae_title}) and that it knows our AE title "
                                f"{self.peer.our_ae_title}")
            raise TransientError(PacsUnreachable(f"Cannot reach {self._name} for {what}",
                                           "check that the PACS is running and that host, port and AE title are right"))
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _run(self, action):
        return with_retries(action, self.endpoint.retries, self.endpoint.backoff_s)

    # -- echo and find ---------------------------------------------------------------------------
    def echo(self) -> None:
        def attempt() -> None:
            ae = self._ae()
            ae.add_requested_context(Verification)
            with self._association(ae, "C-ECHO") as assoc:
                status = assoc.send_c_echo()
                if not status or status.Status != 0x0000:
                    raise PacsError(f"{self._name} failed C-ECHO", "check the PACS log")

        self._run(attempt)

    def _find(self, identifier: pydicom.Dataset, what: str) -> list[pydicom.Dataset]:
        def attempt() -> list[pydicom.Dataset]:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            found = []
            with self._association(ae, what) as assoc:
                for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                    if not status:
                        raise TransientError(PacsError(f"Lost the connection to {self._name} during {what}",
                                                       "check that the PACS is running, then retry"))
                    if status.Status in _PENDING and answer is not None:
                        found.append(answer)
                    elif status.Status != 0x0000:
                        raise PacsError(f"{self._name} failed {what} with status 0x{status.Status:04X}",
                                        "check the query keys, or the PACS log")
            return found

        return self._run(attempt)

    def search_studies(self, filters: QueryFilters) -> list[StudyRecord]:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        for keyword in _STUDY_FIELDS:
            setattr(query, keyword, "")
        for keyword, value in filters.study_keys().items():
            setattr(query, keyword, value)
        found = self._find(query, "a study query (C-FIND)")
        return [study_from_dataset(ds) for ds in found[: filters.limit or None]]

    def search_series(self, study_uid: str, filters: QueryFilters | None = None) -> list[SeriesRecord]:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        for keyword in _SERIES_FIELDS:
            setattr(query, keyword, "")
        for keyword, value in (filters or QueryFilters()).series_keys().items():
            setattr(query, keyword, value)
        return [series_from_dataset(ds, study_uid) for ds in self._find(query, f"the series of study {study_uid} "
                                                                               "(C-FIND)")]

    def search_instances(self, study_uid: str, series_uid: str) -> list[InstanceRecord]:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        query.SOPInstanceUID = query.SOPClassUID = query.InstanceNumber = ""
        found = self._find(query, f"the instances of series {series_uid} (C-FIND)")
        return [instance_from_dataset(ds, study_uid, series_uid) for ds in found]

    def study_exists(self, study_uid: str) -> bool:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        return bool(self._find(query, f"study {study_uid} (C-FIND)"))

    # -- retrieve ----------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, destination: Path, *,
                        expected: list[InstanceRecord] | None = None, progress: ProgressCallback = no_progress,
                        cancel: CancelToken | None = None) -> PulledSeries:
        """C-GET (or C-MOVE when the endpoint says so) of a whole series into ``destination``."""
        destination = Path(destination)
        what = f"series {series_uid} of study {study_uid}"
        if expected is None:
            expected = self.search_instances(study_uid, series_uid)
        if not expected:
            if not self.study_exists(study_uid):
                raise PacsError(f"Study {study_uid} is not on {self._name}",
                                "check the StudyInstanceUID with `aiportal pacs query`")
            raise PacsError(f"Series {series_uid} is not in study {study_uid} on {self._name}",
                            "check the SeriesInstanceUID with `aiportal pacs query --study UID`")
        use_move = self.peer.retrieve == "move"
        protocol = "C-MOVE" if use_move else "C-GET"
        started = time.monotonic()
        receiver = _Receiver(len(expected), progress, cancel, int(self.endpoint.max_retrieve_mb * 1e6),
                             f"{what} from {self._name}")

        history = AttemptHistory()

        def attempt() -> Path:
            staging = staging_folder(destination)
            receiver.reset(staging)
            try:
                if use_move:
                    self._move(study_uid, series_uid, expected, receiver, what)
                else:
                    self._get(study_uid, series_uid, expected, receiver, what)
                return staging
            except TransientError as error:
                history.note(error)
                discard_staging(staging)
                raise
            except BaseException:
                discard_staging(staging)
                raise

        try:
            staging = self._run(attempt)
        except PacsError as error:
            raise history.explain(error) from error
        if receiver.error is not None:
            discard_staging(staging)
            raise receiver.error
        received = {path.stem for path in receiver.files}
        missing = [record.sop_instance_uid for record in expected if record.sop_instance_uid not in received]
        if missing:
            discard_staging(staging)
            raise PacsError(
                f"Partial series: {self._name} sent {len(receiver.files)} of the {len(expected)} instances it lists "
                f"for {what} ({protocol}); missing e.g. {', '.join(missing[:3])}. Nothing was written to "
                f"{destination}", "the series may still be arriving on the PACS: retry later or ask the PACS "
                "administrator")
        finish_staging(staging, destination)
        files = sorted(destination / path.name for path in receiver.files)
        return PulledSeries(self.endpoint.name, protocol, study_uid, series_uid, destination, files,
                            receiver.bytes, time.monotonic() - started)

    def _series_query(self, study_uid: str, series_uid: str) -> pydicom.Dataset:
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        return query

    def _check_final(self, statuses, what: str, operation: str, receiver: _Receiver) -> None:
        final = None
        for status, _ in statuses:
            if not status:
                raise TransientError(PacsError(
                    f"Lost the connection to {self._name} during {operation} of {what}, after "
                    f"{len(receiver.files)} of {receiver.expected} instances; nothing was kept",
                    "check that the PACS is running, then retry"))
            final = status
            if receiver.error is not None:
                break
        if receiver.error is not None:
            raise receiver.error
        if final is not None and final.Status not in (0x0000, 0xB000) and final.Status not in _PENDING:
            raise PacsError(f"{self._name} failed {operation} of {what} with status 0x{final.Status:04X}",
                            "check the PACS log (does it allow retrieval by our AE title?)")

    def _get(self, study_uid: str, series_uid: str, expected: list[InstanceRecord], receiver: _Receiver,
             what: str) -> None:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        sop_classes = sorted({record.sop_class_uid for record in expected if record.sop_class_uid})
        if len(sop_classes) * len(_GET_SYNTAX_GROUPS) > 127:
            raise PacsError(f"{what} mixes {len(sop_classes)} SOP classes, more than one C-GET can negotiate",
                            "retrieve it with DICOMweb or C-MOVE")
        for sop_class in sop_classes:
            # One context per compressed syntax: the PACS then sends each file as stored (no transcoding,
            # which e.g. Orthanc cannot do for JPEG 2000) whatever syntax it was stored in.
            for syntaxes in _GET_SYNTAX_GROUPS:
                ae.add_requested_context(sop_class, syntaxes)
        roles = [build_role(sop_class, scp_role=True) for sop_class in sop_classes]
        with self._association(ae, f"C-GET of {what}", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, receiver.handle)]) as assoc:
            statuses = assoc.send_c_get(self._series_query(study_uid, series_uid),
                                        StudyRootQueryRetrieveInformationModelGet)
            self._check_final(statuses, what, "C-GET", receiver)

    def _move(self, study_uid: str, series_uid: str, expected: list[InstanceRecord], receiver: _Receiver,
              what: str) -> None:
        scp = self._ae()
        for sop_class in sorted({record.sop_class_uid for record in expected if record.sop_class_uid}):
            scp.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        try:
            server = scp.start_server((self.peer.listen_host, int(self.peer.our_port)), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, receiver.handle)])
        except OSError as error:
            raise PacsError(f"Cannot listen on port {self.peer.our_port} for C-MOVE of {what}: {error}",
                            "free that port or set another dimse.our_port (and register it on the PACS)") from error
        try:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            with self._association(ae, f"C-MOVE of {what}") as assoc:
                statuses = assoc.send_c_move(self._series_query(study_uid, series_uid), self.peer.our_ae_title,
                                             StudyRootQueryRetrieveInformationModelMove)
                self._check_final(statuses, what, "C-MOVE", receiver)
        finally:
            server.shutdown()

    # -- store -------------------------------------------------------------------------------
    def store(self, paths: list[Path], progress: ProgressCallback = no_progress) -> list[StoredObject]:
        """C-STORE each file; raises naming the first object the PACS refused (the file stays)."""
        objects = [stored_object(Path(path)) for path in paths]
        if not objects:
            return []
        syntaxes: dict[str, set[str]] = {}
        file_syntax: dict[str, str] = {}
        for item in objects:
            header = pydicom.dcmread(item.path, stop_before_pixels=True)
            file_syntax[item.sop_instance_uid] = str(header.file_meta.TransferSyntaxUID)
            syntaxes.setdefault(item.sop_class_uid, set()).add(file_syntax[item.sop_instance_uid])
        done = [0]

        def attempt() -> None:
            ae = self._ae()
            for sop_class, transfer_syntaxes in syntaxes.items():
                # one context per syntax, so that the PACS can accept each file as it is encoded
                ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                for syntax in sorted(transfer_syntaxes - {ExplicitVRLittleEndian, ImplicitVRLittleEndian}):
                    ae.add_requested_context(sop_class, [syntax])
            with self._store_association(ae, objects[done[0]]) as assoc:
                accepted = {(context.abstract_syntax, context.transfer_syntax[0])
                            for context in assoc.accepted_contexts}
                accepted_classes = {sop_class for sop_class, _ in accepted}
                for item in objects[done[0]:]:
                    if item.sop_class_uid in accepted_classes and (
                            item.sop_class_uid, file_syntax[item.sop_instance_uid]) not in accepted:
                        raise PacsError(
                            f"{self._name} does not accept {_sop_name(item.sop_class_uid)} {item.sop_instance_uid} "
                            f"in transfer syntax {_sop_name(file_syntax[item.sop_instance_uid])}; the file stays at "
                            f"{item.path}", "push it with DICOMweb, or convert it to Explicit VR Little Endian")
                    if item.sop_class_uid not in accepted_classes:
                        raise PacsError(
                            f"{self._name} does not accept SOP class {_sop_name(item.sop_class_uid)} "
                            f"(C-STORE presentation context rejected) for {item.sop_instance_uid}; "
                            f"the file stays at {item.path}",
                            "the PACS does not store this kind of object: export another type (e.g. --seg-type "
                            "binary) or ask the PACS administrator to accept it")
                    status = assoc.send_c_store(item.path) if assoc.is_established else None
                    if not status:
                        raise TransientError(PacsError(
                            f"Lost the connection to {self._name} while storing {item.sop_instance_uid}; the file "
                            f"stays at {item.path}", "check that the PACS is running, then push again"))
                    if status.Status != 0x0000 and status.Status not in _STORE_WARNINGS:
                        reason = _STORE_FAILURES.get(status.Status, "refused")
                        if 0xA700 <= status.Status <= 0xA7FF:
                            reason = "out of resources"
                        raise PacsError(
                            f"{self._name} refused {_sop_name(item.sop_class_uid)} {item.sop_instance_uid}: C-STORE "
                            f"status 0x{status.Status:04X} ({reason}); the file stays at {item.path}",
                            "check the PACS log, or ask the PACS administrator")
                    done[0] += 1
                    progress(done[0] / len(objects), f"stored {done[0]}/{len(objects)} objects")

        self._run(attempt)
        return objects

    @contextmanager
    def _store_association(self, ae: AE, first: StoredObject) -> Iterator[Association]:
        """An association for C-STORE; when the PACS answers C-ECHO but refuses this one, it accepts
        none of the objects' SOP classes (Orthanc then aborts instead of rejecting)."""
        try:
            with self._association(ae, f"C-STORE of {first.sop_instance_uid} and the rest") as assoc:
                yield assoc
                return
        except TransientError:
            probe = self._ae()
            probe.add_requested_context(Verification)
            echo = probe.associate(self.peer.host, int(self.peer.port), ae_title=self.peer.ae_title)
            if not echo.is_established:
                raise
            echo.release()
        raise PacsError(f"{self._name} does not accept SOP class {_sop_name(first.sop_class_uid)} (no C-STORE "
                        f"presentation context accepted) for {first.sop_instance_uid}; the file stays at {first.path}",
                        "the PACS does not store this kind of object: export another type (e.g. --seg-type binary) "
                        "or ask the PACS administrator to accept it")

    def missing_instances(self, objects: list[StoredObject]) -> list[StoredObject]:
        missing = []
        by_series: dict[tuple[str, str], list[StoredObject]] = {}
        for item in objects:
            by_series.setdefault((item.study_uid, item.series_uid), []).append(item)
        for (study_uid, series_uid), items in by_series.items():
            found = {record.sop_instance_uid for record in self.search_instances(study_uid, series_uid)}
            missing += [item for item in items if item.sop_instance_uid not in found]
        return missing


class _Receiver:
    """The C-STORE handler of a retrieval: writes each received instance to the staging folder."""

    def __init__(self, expected: int, progress: ProgressCallback, cancel: CancelToken | None, limit: int,
                 what: str) -> None:
        self.expected, self.progress, self.cancel, self.limit, self.what = expected, progress, cancel, limit, what
        self.lock = threading.Lock()
        self.reset(None)

    def reset(self, folder: Path | None) -> None:
        self.folder = folder
        self.files: list[Path] = []
        self.bytes = 0
        self.error: Exception | None = None

    def handle(self, event) -> int:
        with self.lock:
            if self.error is not None:
                return 0xA700
            try:
                if self.cancel is not None:
                    self.cancel.check(f"retrieving {self.what}")
                data = event.encoded_dataset(include_meta=True)
                self.bytes += len(data)
                if self.bytes > self.limit:
                    raise PacsError(f"Retrieving {self.what} passed the size limit; nothing was kept",
                                    "raise max_retrieve_mb of the endpoint if the series is meant to be this large")
                path = self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
                path.write_bytes(data)
                self.files.append(path)
            except Exception as error:  # reported by the retrieval, not lost in pynetdicom's thread
                self.error = error
                return 0xA700
        self.progress(min(len(self.files) / self.expected, 1.0),
                      f"received {len(self.files)}/{self.expected} instances ({self.bytes / 1e6:.1f} MB)")
        return 0x0000
