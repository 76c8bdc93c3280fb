"""Benchmark of the inference server: per-job service overhead and throughput, embedded vs Celery.

Same run, same data (``totalseg/example_ct_sm.nii.gz``, classic-ct, model in a thread so that the
numbers measure the service, not the model's child-process start):

1. in-process: the pipeline the server runs (load → model → export), called directly;
2. per-job latency through the service with one client (upload → queue → run → poll → download of
   labels.nrrd): overhead = service latency − in-process time;
3. throughput (jobs/s) with 1, 4 and 16 concurrent clients;

for the embedded engine (2 worker threads) and for Celery (Redis broker, one real worker process).

    .venv/bin/python bench/bench_server.py [--jobs-per-client 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO))
from server_fixtures import ApiServer, CeleryWorker, RedisServer  # noqa: E402

from aiportal.server.client import ServerClient  # noqa: E402
from aiportal.server.settings import ServerSettings  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "totalseg" / "example_ct_sm.nii.gz"


def in_process(runs: int, scratch: Path) -> list[float]:
    from aiportal.pipeline import PipelineRequest, run_segmentation

    run_segmentation(PipelineRequest(DATA, "classic-ct", scratch / "warm", executor="thread"))  # imports, caches
    times = []
    for index in range(runs):
        started = time.perf_counter()
        run_segmentation(PipelineRequest(DATA, "classic-ct", scratch / f"run{index}", executor="thread"))
        times.append(time.perf_counter() - started)
    return times


def one_job(client: ServerClient, scratch: Path) -> float:
    started = time.perf_counter()
    job = client.submit_file(DATA, "classic-ct", consent=True)
    job = client.wait(job["id"], poll_s=0.05, timeout_s=600)
    assert job["state"] == "done", job
    client.download(job["id"], "labels.nrrd", scratch / f"{job['id']}.nrrd")
    return time.perf_counter() - started


def throughput(url: str, key: str, clients: int, jobs_per_client: int, scratch: Path) -> float:
    errors: list[BaseException] = []

    def run_client() -> None:
        client = ServerClient(url, api_key=key)
        try:
            for _ in range(jobs_per_client):
                one_job(client, scratch)
        except BaseException as error:  # reported after the run
            errors.append(error)

    threads = [threading.Thread(target=run_client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return clients * jobs_per_client / (time.perf_counter() - started)


def measure_service(server: ApiServer, key: str, args, scratch: Path) -> dict:
    client = ServerClient(server.url, api_key=key)
    one_job(client, scratch)  # warm-up: the worker's first job imports Slicer
    latencies = [one_job(client, scratch) for _ in range(args.latency_jobs)]
    rates = {clients: throughput(server.url, key, clients, max(1, args.jobs_per_client if clients > 1 else 4),
                                 scratch) for clients in (1, 4, 16)}
    return {"latency_s": latencies, "throughput_jobs_per_s": rates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=5)
    parser.add_argument("--jobs-per-client", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="aiportal-bench-server-"))
    report: dict = {"data": DATA.name, "model": "classic-ct", "executor": "thread"}
    report["in_process_s"] = in_process(args.latency_jobs, scratch)

    server = ApiServer(scratch / "embedded", args=["--executor", "thread", "--workers", "2", "--rate-limit", "0"])
    key = server.key("bench", "read,submit")
    server.start()
    try:
        report["embedded"] = measure_service(server, key, args, scratch)
    finally:
        server.stop()

    redis_server = RedisServer(scratch / "redis").start()
    settings = ServerSettings(data_dir=scratch / "celery", engine="celery", broker_url=redis_server.url,
                              executor="thread", rate_limit_per_minute=0)
    server = ApiServer(settings.data_dir, env=settings.environment())
    key = server.key("bench", "read,submit")
    worker = None
    try:
        server.start()
        worker = CeleryWorker(settings.environment(), ["aiportal.classic-ct"], scratch / "worker.log").start()
        report["celery"] = measure_service(server, key, args, scratch)
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        redis_server.stop()

    base = statistics.median(report["in_process_s"])
    print(f"classic-ct on {DATA.name}; model in a thread; 2 cores")
    runs = ", ".join(f"{t:.2f}" for t in report["in_process_s"])
    print(f"in-process pipeline:       median {base:.3f} s  (runs: {runs})")
    for mode in ("embedded", "celery"):
        latency = statistics.median(report[mode]["latency_s"])
        rates = report[mode]["throughput_jobs_per_s"]
        print(f"{mode:<9} service latency median {latency:.3f} s  -> overhead {latency - base:+.3f} s per job; "
              f"throughput jobs/s: " + ", ".join(f"{clients} client(s) {rate:.2f}" for clients, rate in rates.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
