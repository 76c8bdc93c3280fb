"""The job store: every job the server accepted, persisted, so that a restart loses nothing.

SQLite by default (WAL, shared by the API server and its workers on one machine); any
SQLAlchemy URL (``postgresql+psycopg://...``) for API servers and Celery workers on several
machines. The store is also the queue of the embedded engine and the place where workers and
the API meet: workers claim a job atomically (``queued`` → ``running``), write progress and a
heartbeat, and read the cancel flag; the API server reads state for polling and server-sent events.

States: ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``. A running job whose
heartbeat stopped (worker killed, server restarted) goes back to ``queued`` until
``max_attempts``, then to ``failed`` with a reason — never silently lost.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from aiportal.database import make_engine  # noqa: F401  (re-exported: the server opens its database here)
from aiportal.errors import AIPortalError
from aiportal.server.limits import redact_paths

TERMINAL_STATES = ("done", "failed", "cancelled")
JOB_STATES = ("queued", "running", *TERMINAL_STATES)

metadata = sa.MetaData()

jobs_table = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("client_request_id", sa.String(200)),
    sa.Column("model", sa.String(300), nullable=False),
    sa.Column("params", sa.Text, nullable=False, default="{}"),
    sa.Column("formats", sa.String(100), nullable=False),
    sa.Column("source_kind", sa.String(20), nullable=False),  # upload | pacs
    sa.Column("input_name", sa.String(100), nullable=False, default=""),  # our name, never the client's file name
    sa.Column("study_uid", sa.String(70), nullable=False, default=""),
    sa.Column("series_uid", sa.String(70), nullable=False, default=""),
    sa.Column("push", sa.Boolean, nullable=False, default=False),
    sa.Column("deidentify", sa.Boolean, nullable=False, default=False),
    sa.Column("state", sa.String(20), nullable=False, default="queued"),
    sa.Column("fraction", sa.Float, nullable=False, default=0.0),
    sa.Column("stage", sa.String(200), nullable=False, default="queued"),
    sa.Column("error", sa.Text),
    sa.Column("fix", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("worker", sa.String(200), nullable=False, default=""),
    sa.Column("heartbeat", sa.Float, nullable=False, default=0.0),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("fetched", sa.Float),
    sa.Column("expired", sa.Boolean, nullable=False, default=False),
    sa.Column("result", sa.Text, nullable=False, default="{}"),
    sa.UniqueConstraint("owner", "client_request_id", name="one_job_per_request_id"),
)
sa.Index("jobs_by_state", jobs_table.c.state, jobs_table.c.created)


@dataclass
class JobRecord:
    id: str
    owner: str
    client_request_id: str | None
    model: str
    params: dict[str, Any]
    formats: tuple[str, ...]
    source_kind: str
    input_name: str
    study_uid: str
    series_uid: str
    push: bool
    deidentify: bool
    state: str
    fraction: float
    stage: str
    error: str | None
    fix: str | None
    cancel_requested: bool
    attempts: int
    worker: str
    heartbeat: float
    created: float
    started: float | None
    finished: float | None
    fetched: float | None
    expired: bool
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row) -> JobRecord:
        values = dict(row._mapping)
        values["params"] = json.loads(values["params"] or "{}")
        values["result"] = json.loads(values["result"] or "{}")
        values["formats"] = tuple(part for part in values["formats"].split(",") if part)
        return cls(**values)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class JobStore:
    """Jobs in a database; safe to use from several threads and processes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(make_engine(url))

    # -- submission --------------------------------------------------------------------------
    def create(self, *, owner: str, model: str, source_kind: str, formats: tuple[str, ...],
               client_request_id: str | None = None, params: dict | None = None, input_name: str = "",
               study_uid: str = "", series_uid: str = "", push: bool = False,
               deidentify: bool = False, job_id: str | None = None) -> tuple[JobRecord, bool]:
        """A new queued job, or the caller's earlier job with the same ``client_request_id`` (False)."""
        if client_request_id:
            existing = self.find_by_request_id(owner, client_request_id)
            if existing is not None:
                return self._same_request(existing, model), False
        job_id = job_id or uuid.uuid4().hex
        values = dict(id=job_id, owner=owner, client_request_id=client_request_id or None, model=model,
                      params=json.dumps(params or {}, sort_keys=True), formats=",".join(formats),
                      source_kind=source_kind, input_name=input_name, study_uid=study_uid, series_uid=series_uid,
                      push=push, deidentify=deidentify, state="queued", fraction=0.0, stage="queued",
                      cancel_requested=False, attempts=0, worker="", heartbeat=0.0, created=time.time(),
                      expired=False, result="{}")
        try:
            with self.engine.begin() as connection:
                connection.execute(jobs_table.insert().values(**values))
        except IntegrityError:  # the same request id raced in from another connection
            existing = self.find_by_request_id(owner, client_request_id or "")
            if existing is None:
                raise
            return self._same_request(existing, model), False
        record = self.get(job_id)
        assert record is not None
        return record, True

    @staticmethod
    def _same_request(existing: JobRecord, model: str) -> JobRecord:
        if existing.model != model:
            raise AIPortalError(f"client request id {existing.client_request_id!r} was already used for a "
                                f"{existing.model} job ({existing.id})",
                                "use a new client request id for a different request")
        return existing

    def find_by_request_id(self, owner: str, client_request_id: str) -> JobRecord | None:
        query = jobs_table.select().where(jobs_table.c.owner == owner,
                                          jobs_table.c.client_request_id == client_request_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return JobRecord.from_row(row) if row else None

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(jobs_table.select().where(jobs_table.c.id == job_id)).first()
        return JobRecord.from_row(row) if row else None

    def list(self, owner: str | None = None, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        query = jobs_table.select().order_by(jobs_table.c.created.desc()).limit(limit)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        if state is not None:
            query = query.where(jobs_table.c.state == state)
        with self.engine.connect() as connection:
            return [JobRecord.from_row(row) for row in connection.execute(query)]

    def queued_ids(self) -> list[str]:
        query = sa.select(jobs_table.c.id).where(jobs_table.c.state == "queued").order_by(jobs_table.c.created)
        with self.engine.connect() as connection:
            return [row[0] for row in connection.execute(query)]

    # -- worker side -------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str) -> bool:
        """Atomically take a queued job; False when another worker has it or it was cancelled."""
        now = time.time()
        query = (jobs_table.update()
                 .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                 .values(state="running", worker=worker, heartbeat=now, started=now, stage="starting",
                         attempts=jobs_table.c.attempts + 1))
        with self.engine.begin() as connection:
            return connection.execute(query).rowcount == 1

    def claim_next(self, worker: str) -> str | None:
        for job_id in self.queued_ids():
            if self.claim(job_id, worker):
                return job_id
        return None

    def report(self, job_id: str, fraction: float, stage: str) -> bool:
        """Progress and heartbeat of a running job; returns True when cancel was requested."""
        query = (jobs_table.update().where(jobs_table.c.id == job_id, jobs_table.c.state == "running")
                 .values(fraction=min(max(float(fraction), 0.0), 1.0), stage=stage[:200], heartbeat=time.time()))
        with self.engine.begin() as connection:
            connection.execute(query)
            row = connection.execute(sa.select(jobs_table.c.cancel_requested)
                                     .where(jobs_table.c.id == job_id)).first()
        return bool(row and row[0])

    def finish(self, job_id: str, state: str, *, error: str | None = None, fix: str | None = None,
               result: dict | None = None) -> None:
        assert state in TERMINAL_STATES
        error, fix = redact_paths(error), redact_paths(fix)  # clients never see the server's folders
        values: dict[str, Any] = dict(state=state, error=error, fix=fix, finished=time.time(), stage=state)
        if state == "done":
            values["fraction"] = 1.0
        if result is not None:
            values["result"] = json.dumps(result)
        with self.engine.begin() as connection:
            connection.execute(jobs_table.update().where(jobs_table.c.id == job_id,
                                                         jobs_table.c.state.in_(("queued", "running")))
                               .values(**values))

    def update_result(self, job_id: str, **changes: Any) -> None:
        """Merge ``changes`` into a finished job's result (e.g. a later push report)."""
        record = self.get(job_id)
        if record is None:
            return
        result = dict(record.result, **changes)
        with self.engine.begin() as connection:
            connection.execute(jobs_table.update().where(jobs_table.c.id == job_id)
                               .values(result=json.dumps(result)))

    # -- caller side -------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> JobRecord | None:
        """A queued job is cancelled at once; a running one when its worker next reports."""
        with self.engine.begin() as connection:
            connection.execute(jobs_table.update().where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                               .values(state="cancelled", stage="cancelled", cancel_requested=True,
                                       error="cancelled before it started", finished=time.time()))
            connection.execute(jobs_table.update().where(jobs_table.c.id == job_id, jobs_table.c.state == "running")
                               .values(cancel_requested=True, stage="cancelling"))
        return self.get(job_id)

    def mark_fetched(self, job_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(jobs_table.update().where(jobs_table.c.id == job_id, jobs_table.c.fetched.is_(None))
                               .values(fetched=time.time()))

    # -- recovery and expiry -----------------------------------------------------------------
    def recover(self, *, stale_after_s: float, max_attempts: int, every_running: bool = False) -> dict[str, list]:
        """Running jobs that lost their worker go back to the queue, or fail once out of attempts.

        ``every_running``: the caller knows no worker is alive (the embedded server starting up).
        """
        limit = time.time() - stale_after_s
        query = jobs_table.select().where(jobs_table.c.state == "running")
        if not every_running:
            query = query.where(jobs_table.c.heartbeat < limit)
        requeued, failed = [], []
        with self.engine.begin() as connection:
            for row in connection.execute(query).fetchall():
                record = JobRecord.from_row(row)
                guard = (jobs_table.c.id == record.id, jobs_table.c.state == "running",
                         jobs_table.c.heartbeat == record.heartbeat)  # untouched since we read it
                if record.cancel_requested:
                    values = dict(state="cancelled", stage="cancelled", error="cancelled; its worker stopped",
                                  finished=time.time())
                elif record.attempts >= max_attempts:
                    values = dict(state="failed", stage="failed", finished=time.time(),
                                  error=f"the worker running this job stopped (attempt {record.attempts} of "
                                        f"{max_attempts}): worker lost or server restarted",
                                  fix="submit the job again; if it keeps failing, check the worker's logs")
                else:
                    values = dict(state="queued", stage=f"requeued after worker loss (attempt {record.attempts})",
                                  fraction=0.0, worker="")
                if connection.execute(jobs_table.update().where(*guard).values(**values)).rowcount:
                    (requeued if values["state"] == "queued" else failed).append(record.id)
        return {"requeued": requeued, "failed": failed}

    def expire(self, *, result_ttl_s: float, fetched_ttl_s: float) -> list[str]:
        """Ids of finished jobs whose results are due for deletion; marks them expired."""
        now = time.time()
        query = jobs_table.select().where(jobs_table.c.expired.is_(False), jobs_table.c.finished.is_not(None),
                                          sa.or_(jobs_table.c.finished < now - result_ttl_s,
                                                 jobs_table.c.fetched < now - fetched_ttl_s))
        with self.engine.begin() as connection:
            ids = [row.id for row in connection.execute(query).fetchall()]
            if ids:
                connection.execute(jobs_table.update().where(jobs_table.c.id.in_(ids)).values(expired=True))
        return ids
