# ruff: noqa: B008  (FastAPI declares parameters with Depends/Query defaults)
"""The routes that follow and act on an existing job, and the audit query:

- ``GET /v1/jobs`` · ``GET /v1/jobs/{id}`` · ``GET /v1/jobs/{id}/events`` (server-sent events) [status]
- ``POST /v1/jobs/{id}/cancel`` · ``POST /v1/jobs/{id}/push`` [submit]
- ``GET /v1/jobs/{id}/results`` · ``GET /v1/jobs/{id}/results/{name}`` [read]
- ``GET /v1/audit`` [audit]

Other clients' jobs answer 404 unless the role may reach them (:func:`aiportal.server.roles.may_reach`).
They are added to the app itself, like the metrics and MONAI Label routes, not through an
``APIRouter``: FastAPI 0.165 includes a router lazily, as one opaque route, which hides the
route templates from the metrics (route labels) and from the 405 ``Allow`` header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import FileResponse, StreamingResponse

from aiportal.server.auth import Principal
from aiportal.server.engine import push_results, results_folder
from aiportal.server.jobs import JobRecord
from aiportal.server.schemas import STATE_PATTERN, ApiError, ErrorBody, JobView, PushReportView, job_view

log = logging.getLogger("aiportal.server")


def add_job_routes(app: FastAPI, state, require: Callable[[str], Callable[..., Principal]]) -> None:  # noqa: C901
    """The routes over ``state`` (the app's :class:`ServerState`); ``require``: its scope dependency."""
    settings, store = state.settings, state.store

    @app.get("/v1/jobs", response_model=list[JobView], tags=["jobs"])
    def list_jobs(job_state: str | None = Query(None, alias="state", pattern=STATE_PATTERN),
                  limit: int = Query(100, ge=1, le=1000), principal: Principal = Depends(require("status"))):
        owner = None if {"admin", "review"} & principal.scopes else principal.subject
        return [job_view(record) for record in store.list(owner=owner, state=job_state, limit=limit)]

    @app.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses={404: {"model": ErrorBody}})
    def get_job(job_id: str, principal: Principal = Depends(require("status"))):
        return job_view(state.own_job(job_id, principal))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"], responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events until the job ends"},
        404: {"model": ErrorBody}})
    async def job_events(job_id: str, principal: Principal = Depends(require("status"))):
        await asyncio.to_thread(state.own_job, job_id, principal)

        async def stream():
            last, last_sent = None, time.monotonic()
            while True:
                record = await asyncio.to_thread(store.get, job_id)
                if record is None:
                    return
                view = job_view(record)
                key = (view.state, view.fraction, view.stage)
                if key != last:
                    last, last_sent = key, time.monotonic()
                    yield f"event: {'end' if record.terminal else 'progress'}\ndata: {view.model_dump_json()}\n\n"
                    if record.terminal:
                        return
                elif time.monotonic() - last_sent > 10:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"],
                 responses={404: {"model": ErrorBody}})
    def cancel_job(job_id: str, principal: Principal = Depends(require("submit"))):
        state.own_job(job_id, principal, reading=False)
        record = store.request_cancel(job_id)
        assert record is not None
        log.info("job %s: cancel requested", job_id)
        return job_view(record)

    def finished_job(job_id: str, principal: Principal, reading: bool = True) -> JobRecord:
        record = state.own_job(job_id, principal, reading)
        if record.expired:
            raise ApiError(410, f"the results of job {job_id} have expired and were deleted", "submit the job again")
        if not record.result.get("files"):
            raise ApiError(409, f"job {job_id} has no results ({record.state})",
                           "wait until its state is done (GET /v1/jobs/{id} or /events)")
        return record

    @app.get("/v1/jobs/{job_id}/results", tags=["results"],
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 410: {"model": ErrorBody}})
    def job_results(job_id: str, principal: Principal = Depends(require("read"))) -> dict[str, Any]:
        return finished_job(job_id, principal).result

    @app.get("/v1/jobs/{job_id}/results/{name:path}", tags=["results"], response_class=FileResponse, responses={
        200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    def job_result_file(job_id: str, name: str, principal: Principal = Depends(require("read"))):
        record = finished_job(job_id, principal)
        names = {item["name"] for item in record.result["files"]}
        if name not in names:  # only files the export listed: no path ever comes from the client
            raise ApiError(404, f"job {job_id} has no result {name!r}", f"choose one of: {', '.join(sorted(names))}")
        path = results_folder(settings, job_id) / name
        if not path.is_file():
            raise ApiError(410, f"result {name!r} of job {job_id} is gone", "submit the job again")
        store.mark_fetched(job_id)
        media = "application/dicom" if name.endswith(".dcm") else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=Path(name).name)

    @app.post("/v1/jobs/{job_id}/push", response_model=PushReportView, tags=["results"],
              responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    def push_job(job_id: str, principal: Principal = Depends(require("submit"))):
        record = finished_job(job_id, principal, reading=False)
        report = push_results(settings, job_id, record.result)
        store.update_result(job_id, push=report)
        return report

    @app.get("/v1/audit", tags=["audit"])
    def audit(run_id: str | None = Query(None, max_length=100),
              event: str | None = Query(None, pattern="^(ai_run|export|review)$"),
              since_seq: int = Query(0, ge=0), limit: int = Query(500, ge=1, le=10000),
              _: Principal = Depends(require("audit"))) -> list[dict[str, Any]]:
        from aiportal.audit import AuditLog
        from aiportal.settings import Settings

        records = [record for record in AuditLog(Settings.from_environment().audit_log).records()
                   if record.get("seq", 0) > since_seq and (not event or record.get("event") == event)
                   and (not run_id or record.get("run_id") == run_id or run_id in record.get("run_ids", []))]
        return records[:limit]
