"""A Celery task redelivered after its pool child died takes its job over at once.

With ``task_acks_late`` and ``task_reject_on_worker_lost`` the broker hands the task out again
as soon as the child is gone, but the job row still says "running" under the dead child's name,
so a plain claim fails and the job would wait for the stale-heartbeat sweep. When the recorded
worker is a process on this host that no longer runs, the redelivered task takes the job over
(one attempt more; failed when out of attempts).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from aiportal.server.jobs import JobStore, jobs_table


def worker_name() -> str:
    return f"celery@{socket.gethostname()}:{os.getpid()}"


def _dead_here(worker: str) -> bool:
    """Whether ``worker`` ("celery@host:pid") names a process of this host that has ended."""
    name, _, pid = worker.rpartition(":")
    if name != f"celery@{socket.gethostname()}" or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z"  # killed, not yet reaped


def take_over_orphan(store: JobStore, job_id: str, worker: str, max_attempts: int) -> bool:
    """True when this worker now holds ``job_id``, taken from a dead worker of this host."""
    record = store.get(job_id)
    if record is None or record.state != "running" or not record.worker or not _dead_here(record.worker):
        return False
    guard = (jobs_table.c.id == job_id, jobs_table.c.state == "running", jobs_table.c.worker == record.worker)
    now = time.time()
    with store.engine.begin() as connection:
        if record.attempts >= max_attempts:
            connection.execute(jobs_table.update().where(*guard).values(
                state="failed", stage="failed", finished=now,
                error=f"the worker running this job stopped (attempt {record.attempts} of {max_attempts})",
                fix="submit the job again; if it keeps failing, check the worker's logs"))
            return False
        taken = connection.execute(jobs_table.update().where(*guard).values(
            worker=worker, heartbeat=now, started=now, fraction=0.0,
            stage=f"redelivered after its worker died (attempt {record.attempts + 1})",
            attempts=jobs_table.c.attempts + 1)).rowcount == 1
    return taken
