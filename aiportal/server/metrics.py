# ruff: noqa: B008  (FastAPI declares parameters with Depends defaults)
"""Service metrics in the Prometheus text format at ``GET /metrics`` (its own ``metrics`` scope:
``server-key create prometheus --role monitor``).

- ``aiportal_http_requests_total{route,method,status}`` and
  ``aiportal_http_request_seconds{route,method}`` (histogram): route templates, never job ids;
- ``aiportal_jobs{model,state}``, ``aiportal_queue_depth``: from the job store (every worker's jobs);
- ``aiportal_inference_seconds{model}`` (sum, count) of finished jobs, ``aiportal_jobs_failed_total``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from starlette.routing import Match

from aiportal.server.jobs import jobs_table

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RequestMetrics:
    """Counts and latency histograms per (route template, method)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.counts[(route, method, status)] += 1
            slot = next((index for index, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
            self.buckets[(route, method)][slot] += 1
            self.sums[(route, method)] += seconds

    def lines(self) -> list[str]:
        out = ["# TYPE aiportal_http_requests_total counter"]
        with self._lock:
            out += [f'aiportal_http_requests_total{{route="{route}",method="{method}",status="{status}"}} {count}'
                    for (route, method, status), count in sorted(self.counts.items())]
            out.append("# TYPE aiportal_http_request_seconds histogram")
            for (route, method), counts in sorted(self.buckets.items()):
                labels, running = f'route="{route}",method="{method}"', 0
                for bound, count in zip((*BUCKETS, "+Inf"), counts, strict=True):
                    running += count
                    out.append(f'aiportal_http_request_seconds_bucket{{{labels},le="{bound}"}} {running}')
                out.append(f"aiportal_http_request_seconds_sum{{{labels}}} {self.sums[(route, method)]:.6f}")
                out.append(f"aiportal_http_request_seconds_count{{{labels}}} {running}")
        return out


class MetricsMiddleware:
    """Times every HTTP request; the route is the matched template ("unmatched" otherwise)."""

    def __init__(self, app, metrics: RequestMetrics, routes) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            self.metrics.observe(self._template(scope), scope["method"], status, time.perf_counter() - started)

    def _template(self, scope) -> str:
        for route in self.routes():
            if route.matches(scope)[0] == Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"


def job_lines(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        by_state = connection.execute(sa.select(jobs_table.c.model, jobs_table.c.state, sa.func.count())
                                      .group_by(jobs_table.c.model, jobs_table.c.state)).fetchall()
        durations = connection.execute(
            sa.select(jobs_table.c.model, sa.func.count(), sa.func.sum(jobs_table.c.finished - jobs_table.c.started))
            .where(jobs_table.c.state == "done", jobs_table.c.started.is_not(None))
            .group_by(jobs_table.c.model)).fetchall()
    out = ["# TYPE aiportal_jobs gauge"]
    out += [f'aiportal_jobs{{model="{model}",state="{state}"}} {count}' for model, state, count in sorted(by_state)]
    out += ["# TYPE aiportal_queue_depth gauge",
            f"aiportal_queue_depth {sum(count for _, state, count in by_state if state == 'queued')}",
            "# TYPE aiportal_jobs_failed_total counter"]
    out += [f'aiportal_jobs_failed_total{{model="{model}"}} {count}'
            for model, state, count in sorted(by_state) if state == "failed"]
    out.append("# TYPE aiportal_inference_seconds summary")
    for model, count, total in sorted(durations):
        out += [f'aiportal_inference_seconds_sum{{model="{model}"}} {float(total or 0):.3f}',
                f'aiportal_inference_seconds_count{{model="{model}"}} {count}']
    return out


def add_metrics(app: FastAPI, state, require) -> RequestMetrics:
    """The middleware and the ``/metrics`` route (``require``: the app's scope dependency); returns the
    request counters, which the dashboard shows too."""
    metrics = RequestMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def prometheus(_=Depends(require("metrics"))) -> PlainTextResponse:
        body = "\n".join([*metrics.lines(), *job_lines(state.store.engine)]) + "\n"
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return metrics
