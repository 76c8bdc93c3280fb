"""The inference server's request and response bodies, and its HTTP error (shared by the route modules)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from aiportal.errors import AIPortalError
from aiportal.server.jobs import JobRecord

STATE_PATTERN = "^(queued|running|done|failed|cancelled)$"


class ApiError(AIPortalError):
    """An AIPortalError with an HTTP status."""

    def __init__(self, status: int, message: str, fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.status = status


# -- response and request bodies -------------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str
    fix: str | None = None


class Health(BaseModel):
    status: str
    version: str
    engine: str
    queued: int
    running: int
    pacs: str | None = None


class LabelInfo(BaseModel):
    value: int
    name: str


class ModelInfo(BaseModel):
    id: str
    title: str
    modality: str
    task: str
    description: str
    limitations: str
    version: str
    license: str
    family: str
    devices: list[str]
    prompts: list[str]
    labels: list[LabelInfo]


class JobView(BaseModel):
    id: str
    state: str = Field(description="queued, running, done, failed or cancelled")
    fraction: float
    stage: str
    model: str
    source_kind: str
    formats: list[str]
    client_request_id: str | None = None
    study_uid: str = ""
    series_uid: str = ""
    push: bool = False
    attempts: int = 0
    created: str
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    fix: str | None = None
    results_available: bool = False
    warnings: list[str] = Field(default_factory=list, description="the run's warnings (as its run.json records them)")
    result: dict[str, Any] | None = None


class PacsJobRequest(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64, pattern=r"^[0-9.]+$")
    series_uid: str = Field(default="", max_length=64, pattern=r"^[0-9.]*$",
                            description="empty: the study's only image series")
    model: str = Field(min_length=1, max_length=200)
    client_request_id: str | None = Field(default=None, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    formats: str = Field(default="nrrd,json,seg,sr", max_length=100)
    push: bool = Field(default=False, description="store the SEG and SR on the PACS when done")
    deidentify: bool = False


class PushReportView(BaseModel):
    endpoint: str
    protocol: str
    verified: bool
    objects: list[str]
    seconds: float


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds") if epoch else None


def job_view(record: JobRecord) -> JobView:
    return JobView(
        id=record.id, state=record.state, fraction=round(record.fraction, 4), stage=record.stage, model=record.model,
        source_kind=record.source_kind, formats=list(record.formats), client_request_id=record.client_request_id,
        study_uid=record.study_uid, series_uid=record.series_uid, push=record.push, attempts=record.attempts,
        created=_iso(record.created) or "", started=_iso(record.started), finished=_iso(record.finished),
        error=record.error, fix=record.fix, results_available=bool(record.result.get("files")) and not record.expired,
        warnings=list(record.result.get("warnings") or []), result=record.result or None)
