"""Where jobs run: an embedded worker pool (the default, nothing to install) or Celery workers.

Both engines call :func:`execute_job`, the one worker-side function: claim the job atomically,
get its input (the upload, or a series pulled from the PACS, de-identified when asked), run
:func:`~aiportal.pipeline.run_segmentation`, push SEG+SR back when asked, and record the
outcome. Progress, heartbeat and the cancel flag go through the :class:`JobStore`, so the API
server and a worker on another machine need nothing but the database, the shared data folder
and (Celery) the broker.

- ``EmbeddedEngine``: N threads in the API server take queued jobs from the store. A restart
  puts the jobs that were running back in the queue (or fails them after ``max_attempts``).
- ``CeleryEngine``: the API server sends ``aiportal.run_job(job_id)`` to the queue of the job's
  model (``aiportal.<model>``); ``celery -A aiportal.server.celery_app worker -Q aiportal.classic-ct``
  runs them. Tasks are acknowledged late; a worker that dies leaves a stale heartbeat, and the API
  server's maintenance loop requeues and re-sends the job (duplicates are harmless: claims are atomic).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Protocol

from aiportal.errors import AIPortalError, CancelledError
from aiportal.export.exporter import ExportOptions
from aiportal.pipeline import PipelineRequest, run_segmentation
from aiportal.server.jobs import JobRecord, JobStore
from aiportal.server.settings import ServerSettings

log = logging.getLogger("aiportal.server")

HEARTBEAT_S = 1.0


def job_folder(settings: ServerSettings, job_id: str) -> Path:
    return Path(settings.data_dir) / "jobs" / job_id


def results_folder(settings: ServerSettings, job_id: str) -> Path:
    return job_folder(settings, job_id) / "results"


def queue_for(model_id: str) -> str:
    """The Celery queue of a model: ``aiportal.classic-ct``; folder models share ``aiportal.folder``."""
    return "aiportal.folder" if ":" in model_id else "aiportal." + re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)


# -- PACS ------------------------------------------------------------------------------------------
class PacsGateway(Protocol):
    """What the server needs from a PACS: pull one series into a folder, push result files back."""

    name: str

    def pull(self, study_uid: str, series_uid: str, destination: Path) -> tuple[list[Path], str]: ...

    def push(self, files: list[Path]) -> dict: ...


class ConfiguredPacs:
    """A PACS endpoint from the project's PACS settings (:mod:`aiportal.pacs.config`), over DICOMweb first."""

    def __init__(self, endpoint_name: str) -> None:
        from aiportal.pacs.config import get_endpoint

        self.endpoint = get_endpoint(endpoint_name)
        self.name = endpoint_name

    def pull(self, study_uid: str, series_uid: str, destination: Path) -> tuple[list[Path], str]:
        from aiportal.pacs.workflow import pull_series

        pulled = pull_series(self.endpoint, study_uid, series_uid or None, destination)
        return list(pulled.files), pulled.series_uid

    def push(self, files: list[Path]) -> dict:
        from aiportal.pacs.workflow import push_files

        report = push_files(self.endpoint, files)
        return {"endpoint": report.endpoint, "protocol": report.protocol, "verified": report.verified,
                "objects": [obj.sop_instance_uid for obj in report.objects], "seconds": round(report.seconds, 3)}


def pacs_gateway(settings: ServerSettings) -> PacsGateway:
    if not settings.pacs_endpoint:
        raise AIPortalError("this server has no PACS configured",
                            "start it with --pacs NAME (an endpoint of `aiportal pacs`), or upload the image")
    return ConfiguredPacs(settings.pacs_endpoint)


# -- the worker-side job ---------------------------------------------------------------------------
class _Reporter:
    """Progress into the store (a few writes a second at most), the cancel flag back, and a heartbeat
    from its own thread, so that a long import or a silent model never looks like a dead worker."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.fraction, self.stage = 0.0, "starting"
        self._written = 0.0
        self._cancel = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def progress(self, fraction: float, stage: str) -> None:
        changed_stage = stage != self.stage
        self.fraction, self.stage = fraction, stage
        if changed_stage or time.monotonic() - self._written > 0.25:
            self._write()

    def cancelled(self) -> bool:
        return self._cancel

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # a briefly locked database: the next beat will do
                log.warning("job %s: heartbeat not written", self.job_id)

    def _write(self) -> None:
        with self._lock:
            self._written = time.monotonic()
            self._cancel = self.store.report(self.job_id, self.fraction, self.stage) or self._cancel


def execute_job(settings: ServerSettings, store: JobStore, job_id: str, worker: str, *,
                claimed: bool = False) -> str | None:
    """Run one job to its end if this worker can claim it; returns its final state (None: not claimed)."""
    if not claimed and not store.claim(job_id, worker):
        return None
    record = store.get(job_id)
    assert record is not None
    try:
        with _Reporter(store, job_id) as reporter:
            result = _run(settings, record, reporter)
    except CancelledError:
        store.finish(job_id, "cancelled", error="cancelled on request")
        log.info("job %s cancelled", job_id)
        return "cancelled"
    except AIPortalError as error:
        store.finish(job_id, "failed", error=error.message, fix=error.fix, result=getattr(error, "partial", None))
        log.info("job %s failed: %s", job_id, type(error).__name__)
        return "failed"
    except Exception as error:  # our bug: still an explicit failure, with the traceback in the server log
        log.error("job %s: internal error\n%s", job_id, traceback.format_exc())
        store.finish(job_id, "failed", error=f"internal error: {type(error).__name__}",
                     fix="report this to the server administrator with the job id")
        return "failed"
    store.finish(job_id, "done", result=result)
    log.info("job %s done", job_id)
    return "done"


def _run(settings: ServerSettings, record: JobRecord, reporter: _Reporter) -> dict:
    folder = job_folder(settings, record.id)
    out_dir = results_folder(settings, record.id)
    shutil.rmtree(out_dir, ignore_errors=True)  # a retried job starts clean
    if "followup" in record.params:  # a dispatch rule's follow-up: its own job (aiportal/server/followup_job.py)
        from aiportal.server.followup_job import run_followup_job

        return run_followup_job(settings, record, reporter, folder, out_dir)
    mapping = None
    series_uid = record.series_uid or None
    if record.source_kind == "pacs":
        reporter.progress(0.0, "pulling the series from the PACS")
        pulled_dir = folder / "input" / "pacs"
        shutil.rmtree(pulled_dir, ignore_errors=True)
        files, series_uid = pacs_gateway(settings).pull(record.study_uid, record.series_uid, pulled_dir)
        input_path = pulled_dir
    else:
        input_path = folder / "input" / record.input_name
        files = sorted(input_path.rglob("*")) if input_path.is_dir() else []
    if record.deidentify and files:
        from aiportal.pacs.deidentify import ReidentificationMap, deidentify_files

        reporter.progress(0.01, "de-identifying")
        mapping = ReidentificationMap()
        clean_dir = folder / "input" / "deidentified"
        shutil.rmtree(clean_dir, ignore_errors=True)
        deidentify_files([path for path in files if path.is_file()], clean_dir, mapping)
        mapping.save(folder / "reidentification.json")  # stays on site, owner-only
        input_path, series_uid = clean_dir, mapping.uids.get(series_uid or "", None)
    options = ExportOptions(formats=tuple(record.formats),
                            assign_missing_uids=bool(record.params.get("assign_missing_uids", False)))
    request = PipelineRequest(
        input_path=input_path, model_id=record.model, out_dir=out_dir, options=options,
        params={key: value for key, value in record.params.items() if key != "assign_missing_uids"},
        series_uid=series_uid, executor=settings.executor, timeout_s=settings.job_timeout_s, user=record.owner,
        input_label=f"server job {record.id}",
        via="silent-pilot" if record.owner == "dispatch" and not record.push else "server")  # audit report groups
    result = run_segmentation(request, reporter.progress, reporter.cancelled).as_json()
    result["push"] = None
    if record.push:
        reporter.progress(0.99, "pushing SEG and SR to the PACS")
        try:
            result["push"] = push_results(settings, record.id, result, mapping)
        except AIPortalError as error:
            error.partial = result  # type: ignore[attr-defined]  # results stay fetchable
            raise
    return result


def push_results(settings: ServerSettings, job_id: str, result: dict, mapping=None) -> dict:
    """Store every DICOM object of the job (SEG, SR, key images, models...) on the PACS (re-identified first if
    the input was de-identified), audited."""
    from aiportal.audit import AuditLog
    from aiportal.export.exporter import dicom_object_names
    from aiportal.settings import Settings

    out_dir = results_folder(settings, job_id)
    files = [out_dir / name for name in dicom_object_names(result["files"])]
    if not files:
        raise AIPortalError(f"job {job_id} has no DICOM SEG/SR to push",
                            "submit the job with formats including seg,sr (needs a DICOM source)")
    if mapping is None and (job_folder(settings, job_id) / "reidentification.json").is_file():
        from aiportal.pacs.deidentify import ReidentificationMap

        mapping = ReidentificationMap.load(job_folder(settings, job_id) / "reidentification.json")
    if mapping is not None:
        from aiportal.pacs.deidentify import reidentify_files

        files = reidentify_files(files, job_folder(settings, job_id) / "reidentified", mapping)
    report = pacs_gateway(settings).push(files)
    AuditLog(Settings.from_environment().audit_log).append(
        "export", run_id=result.get("run_id", ""), run_ids=[result.get("run_id", "")], destination="pacs",
        pacs=report["endpoint"], study_uid=result.get("study_uid", ""), series_uid=result.get("series_uid", ""),
        user=f"server job {job_id}", pushed=report["objects"], verified=report["verified"],
        formats=sorted({item["kind"] for item in result["files"] if item["sop_instance_uid"]}))
    return report


# -- engines ---------------------------------------------------------------------------------------
class Engine(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, record: JobRecord) -> None: ...


class _Maintenance:
    """Requeue jobs whose worker died, delete expired results: every few seconds, in the API server."""

    def __init__(self, settings: ServerSettings, store: JobStore, resend=None) -> None:
        self.settings, self.store, self.resend = settings, store, resend
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aiportal-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        outcome = self.store.recover(stale_after_s=self.settings.stale_after_s, max_attempts=self.settings.max_attempts)
        for job_id in outcome["requeued"]:
            log.warning("job %s lost its worker; requeued", job_id)
            if self.resend is not None:
                self.resend(job_id)
        for job_id in outcome["failed"]:
            log.warning("job %s lost its worker too often; failed", job_id)
        for job_id in self.store.expire(result_ttl_s=self.settings.result_ttl_s,
                                        fetched_ttl_s=self.settings.fetched_ttl_s):
            shutil.rmtree(job_folder(self.settings, job_id), ignore_errors=True)

    def _loop(self) -> None:
        interval = max(0.5, min(5.0, self.settings.stale_after_s / 3))
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception:  # keep maintaining; the database may be briefly locked
                log.exception("maintenance pass failed")


class EmbeddedEngine:
    """``workers`` threads in this process run queued jobs from the store."""

    def __init__(self, settings: ServerSettings, store: JobStore) -> None:
        self.settings, self.store = settings, store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._maintenance = _Maintenance(settings, store)
        self.name = f"embedded@{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        # this process is the only worker of its jobs: whatever was running died with the last server
        outcome = self.store.recover(stale_after_s=0, max_attempts=self.settings.max_attempts, every_running=True)
        if outcome["requeued"] or outcome["failed"]:
            log.warning("restart: %d job(s) requeued, %d failed", len(outcome["requeued"]), len(outcome["failed"]))
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._loop, args=(f"{self.name}/{index}",), daemon=True,
                                      name=f"aiportal-worker-{index}")
            thread.start()
            self._threads.append(thread)
        self._maintenance.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._maintenance.stop()

    def submit(self, record: JobRecord) -> None:
        self._wake.set()

    def _loop(self, worker: str) -> None:
        while not self._stop.is_set():
            job_id = self.store.claim_next(worker)
            if job_id is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                execute_job(self.settings, self.store, job_id, worker, claimed=True)
            except Exception:
                log.exception("worker %s: job %s", worker, job_id)


class CeleryEngine:
    """Jobs go to Celery workers through the broker, one queue per model."""

    def __init__(self, settings: ServerSettings, store: JobStore) -> None:
        from aiportal.server.celery_app import make_celery

        self.settings, self.store = settings, store
        self.app = make_celery(settings)
        self._maintenance = _Maintenance(settings, store, resend=self._send)

    def start(self) -> None:
        # the broker may have lost messages (restarted without persistence): send every queued job again
        for job_id in self.store.queued_ids():
            self._send(job_id)
        self._maintenance.run_once()
        self._maintenance.start()

    def stop(self) -> None:
        self._maintenance.stop()

    def submit(self, record: JobRecord) -> None:
        self._send(record.id, record.model)

    def _send(self, job_id: str, model: str | None = None) -> None:
        if model is None:
            record = self.store.get(job_id)
            if record is None:
                return
            model = record.model
        self.app.send_task("aiportal.run_job", args=[job_id], queue=queue_for(model))


def make_engine(settings: ServerSettings, store: JobStore) -> Engine:
    return CeleryEngine(settings, store) if settings.engine == "celery" else EmbeddedEngine(settings, store)
