"""A Celery pool child killed mid-job (issue 18): the worker's main process lives on, and the job
is redelivered and taken over at once, not after the stale-heartbeat sweep. Real Redis, a real
prefork Celery worker, a real uvicorn API server.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from processes import alive, gone_within, wait_for_pids  # noqa: E402
from server_fixtures import ApiServer, CeleryWorker, RedisServer  # noqa: E402

from aiportal.server.client import ServerClient  # noqa: E402

CT = "totalseg/example_ct_sm.nii.gz"


def test_a_killed_pool_child_has_its_job_redelivered_at_once(shared_data, tmp_path):
    from aiportal.server.jobs import JobStore
    from aiportal.server.settings import ServerSettings

    redis_server = RedisServer(tmp_path / "redis").start()
    data_dir = tmp_path / "server"
    settings = ServerSettings(data_dir=data_dir, engine="celery", broker_url=redis_server.url,
                              stale_after_s=3600.0, max_attempts=2, executor="thread")  # no sweep can help
    env = settings.environment()
    server = ApiServer(data_dir, env=env)
    key = server.key("client", "read,submit")
    worker = None
    try:
        server.start()
        worker = CeleryWorker(env, ["aiportal.classic-ct"], tmp_path / "worker.log", "w1", pool="prefork").start()
        client = ServerClient(server.url, api_key=key)
        job = client.submit_file(shared_data / CT, "classic-ct", consent=True)
        store = JobStore.from_url(settings.db_url)
        deadline = time.monotonic() + 60
        while (record := store.get(job["id"])).state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.state == "running" and record.attempts == 1, record
        child = int(record.worker.rpartition(":")[2])
        assert child != worker.process.pid  # the task runs in a pool child
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        final = client.wait(job["id"], timeout_s=120)
        assert final["state"] == "done", (final, worker.log_tail())
        assert final["attempts"] == 2 and time.monotonic() - killed_at < 100
        assert alive(worker.process.pid), "the worker's main process died with its pool child"
        assert client.results(job["id"])["volumes_ml"]
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        redis_server.stop()


def test_the_model_child_dies_with_a_killed_pool_child(shared_data, tmp_path):
    """The model runs in its own process (executor "process", the default) and, like a long GPU
    inference, writes nothing for a while (the test's SleepyBackend, which also starts a helper
    process). SIGKILL of the Celery pool child running it must take both along (they would hold the GPU)."""
    import shutil

    import psutil

    from aiportal.server.engine import job_folder, make_engine
    from aiportal.server.jobs import JobStore
    from aiportal.server.settings import ServerSettings

    redis_server = RedisServer(tmp_path / "redis").start()
    settings = ServerSettings(data_dir=tmp_path / "server", engine="celery", broker_url=redis_server.url,
                              stale_after_s=3600.0, max_attempts=1, executor="process")  # no second run
    testing = Path(__file__).resolve().parent
    temp = tmp_path / "tmp"  # the model run's folder (a copy of the image) goes here
    temp.mkdir()
    env = {**settings.environment(), "PYTHONPATH": os.pathsep.join([str(testing.parent), str(testing)]),
           "TMPDIR": str(temp)}
    worker = None
    try:
        worker = CeleryWorker(env, ["aiportal.test-threshold"], tmp_path / "worker.log", "w1", pool="prefork",
                              app_module="celery_test_app").start()
        store = JobStore.from_url(settings.db_url)
        pid_file = tmp_path / "pids"
        record, _ = store.create(owner="test", model="test-threshold", source_kind="upload", formats=("nrrd",),
                                 params={"pid_file": str(pid_file)}, input_name="upload.nii.gz")
        (job_folder(settings, record.id) / "input").mkdir(parents=True)
        shutil.copy(shared_data / CT, job_folder(settings, record.id) / "input" / "upload.nii.gz")
        make_engine(settings, store).submit(record)
        model_child, helper = wait_for_pids(pid_file, timeout=120)
        assert list(temp.glob("aiportal-run-*/input.npy")), "the run did not put its input where expected"
        pool_child = psutil.Process(model_child).parent()
        assert pool_child is not None and pool_child.pid != worker.process.pid, worker.log_tail()
        pool_child.kill()
        assert gone_within([model_child, helper], 3.0), "the model run outlived its killed pool child"
        assert not list(temp.glob("aiportal-run-*")), "the killed run left its image copy"
        assert alive(worker.process.pid)
    finally:
        if worker is not None:
            worker.stop()
        redis_server.stop()
