"""The Celery side of the server: ``celery -A aiportal.server.celery_app worker -Q aiportal.classic-ct``.

A worker reads the same ``AIPORTAL_SERVER_*`` settings as the API server (database URL, data
folder, broker URL) and runs :func:`aiportal.server.engine.execute_job`. Start one worker per
GPU, each with ``--concurrency 1`` (a model run uses the whole device), subscribed to the queues
of the models it serves (``aiportal.<model id>``). With the default prefork pool a pool child that
dies mid-job has its task redelivered at once and taken over (:mod:`.redelivery`).
"""

from __future__ import annotations

from celery import Celery

from aiportal.audit_database import anchor_audit_in
from aiportal.server.settings import ServerSettings


def make_celery(settings: ServerSettings) -> Celery:
    app = Celery("aiportal", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,  # a task whose worker dies is not lost in the broker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job at a time per worker process: a model run fills the device
        task_default_queue="aiportal.default",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 3600},
    )

    @app.task(name="aiportal.run_job", ignore_result=True)
    def run_job(job_id: str) -> str | None:
        from aiportal.server.engine import execute_job
        from aiportal.server.redelivery import take_over_orphan, worker_name

        worker_settings = ServerSettings.from_environment()
        anchor_audit_in(worker_settings.db_url)
        store, worker = _store(worker_settings), worker_name()
        taken = take_over_orphan(store, job_id, worker, worker_settings.max_attempts)  # its child died mid-job
        return execute_job(worker_settings, store, job_id, worker, claimed=taken)

    return app


_stores: dict = {}


def _store(settings: ServerSettings):
    from aiportal.server.jobs import JobStore

    if settings.db_url not in _stores:
        _stores[settings.db_url] = JobStore.from_url(settings.db_url)
    return _stores[settings.db_url]


def __getattr__(name: str):
    # `celery -A aiportal.server.celery_app` looks for `app`; built lazily so that importing this module is cheap
    if name in ("app", "celery"):
        return make_celery(ServerSettings.from_environment())
    raise AttributeError(name)
