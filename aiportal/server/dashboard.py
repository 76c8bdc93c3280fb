# ruff: noqa: B008  (FastAPI declares parameters with Depends defaults)
"""``GET /dashboard`` [dashboard]: one self-contained HTML page (inline SVG, no script, refreshed
every 30 s) with the service figures of ``/metrics`` and the governance figures of the audit trail.

Its own scope (role ``dashboard``; ``admin`` has it too): the page shows counts, latencies and
rates per model and route — never a job id, a study or a file name. In a browser the server asks
for the key with the browser's own sign-in box (:mod:`.browser_auth`).
"""

from __future__ import annotations

import re
from html import escape

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from aiportal.charts import stacked_bars
from aiportal.server.metrics import RequestMetrics, job_lines

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")  # templates hold braces
STATE_COLOURS = {"queued": "#90a4ae", "running": "#1565c0", "done": "#2e7d32", "failed": "#c62828",
                 "cancelled": "#6d4c41"}
STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}"
         "figure{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
         "figcaption{font-weight:bold}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th:first-child,td:first-child{text-align:left}"
         ".alarm{color:#c62828;font-weight:bold}.headline span{display:inline-block;margin-right:2em;font-size:1.3em}")


def parse_samples(text_lines: list[str]) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus text lines."""
    samples = []
    for line in text_lines:
        if match := SAMPLE.match(line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def _table(headers: list[str], rows: list[list[str]], css_id: str) -> str:
    head = "".join(f"<th>{escape(item)}</th>" for item in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{css_id}"><tr>{head}</tr>{body or "<tr><td>none yet</td></tr>"}</table>'


def service_section(samples: list[tuple[str, dict[str, str], float]]) -> str:
    jobs: dict[str, dict[str, float]] = {}
    for name, labels, value in samples:
        if name == "aiportal_jobs":
            jobs.setdefault(labels["model"], {})[labels["state"]] = value
    queue = next((value for name, _, value in samples if name == "aiportal_queue_depth"), 0.0)
    failed = sum(value for name, _, value in samples if name == "aiportal_jobs_failed_total")
    inference = {labels["model"]: value for name, labels, value in samples if name == "aiportal_inference_seconds_sum"}
    inference_n = {labels["model"]: value for name, labels, value in samples
                   if name == "aiportal_inference_seconds_count"}
    requests: dict[tuple[str, str], list[float]] = {}
    for name, labels, value in samples:
        if name in ("aiportal_http_request_seconds_sum", "aiportal_http_request_seconds_count"):
            slot = 0 if name.endswith("_sum") else 1
            requests.setdefault((labels["route"], labels["method"]), [0.0, 0.0])[slot] = value
    errors: dict[tuple[str, str], float] = {}
    for name, labels, value in samples:
        if name == "aiportal_http_requests_total" and labels["status"].startswith("5"):
            key = (labels["route"], labels["method"])
            errors[key] = errors.get(key, 0.0) + value
    bars = [(model, {state: count / total for state, count in states.items()})
            for model, states in sorted(jobs.items()) if (total := sum(states.values()))]
    chart = stacked_bars("Jobs per model by state (shares)", bars, STATE_COLOURS)
    job_rows = [[model, *(f"{states.get(state, 0):.0f}" for state in STATE_COLOURS),
                 f"{inference[model] / inference_n[model]:.1f}" if inference_n.get(model) else "-"]
                for model, states in sorted(jobs.items())]
    request_rows = [[route, method, f"{count:.0f}", f"{1000 * total / count:.1f}" if count else "-",
                     f"{errors.get((route, method), 0):.0f}"]
                    for (route, method), (total, count) in sorted(requests.items())]
    return (f'<h2>Service</h2><p class="headline"><span id="queue-depth">queue depth {queue:.0f}</span>'
            f'<span id="failed-jobs">failed jobs {failed:.0f}</span></p>{chart}'
            + _table(["model", *STATE_COLOURS, "mean inference s"], job_rows, "jobs")
            + _table(["route", "method", "requests", "mean ms", "5xx"], request_rows, "requests"))


def governance_section(window: int = 20) -> str:
    from aiportal.audit import AuditLog
    from aiportal.audit_html import model_charts
    from aiportal.audit_report import governance, table
    from aiportal.settings import Settings

    figures = governance(AuditLog(Settings.from_environment().audit_log).records(), window)
    alarms = [f"{item.model_id} {item.model_version}" for item in figures if item.drift == "alarm"]
    alarm = (f'<p class="alarm" id="drift">Drift alarm: {escape(", ".join(alarms))}</p>' if alarms
             else '<p id="drift">No drift alarm.</p>')
    return (f"<h2>Governance (audit trail)</h2>{alarm}<pre>{escape(table(figures, window))}</pre>"
            + "".join(model_charts(figures, window)))


def dashboard_page(request_metrics: RequestMetrics, store_engine) -> str:
    samples = parse_samples([*request_metrics.lines(), *job_lines(store_engine)])
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">'
            f"<title>AI Portal dashboard</title><style>{STYLE}</style></head><body><h1>AI Portal dashboard</h1>"
            + service_section(samples) + governance_section() + "</body></html>\n")


def add_dashboard(app: FastAPI, state, require, request_metrics: RequestMetrics) -> None:
    @app.get("/dashboard", tags=["server"], response_class=HTMLResponse,
             responses={200: {"content": {"text/html": {}}, "description": "the dashboard page"}})
    def dashboard(_=Depends(require("dashboard"))) -> HTMLResponse:
        return HTMLResponse(dashboard_page(request_metrics, state.store.engine),
                            headers={"Cache-Control": "no-store"})
