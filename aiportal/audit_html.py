"""``aiportal audit report --html FILE``: the governance figures as one self-contained HTML page
(a table and inline-SVG charts, no script, no external file)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from aiportal.audit_report import ModelFigures, drift_limit, table
from aiportal.charts import histogram, lines, stacked_bars
from aiportal.errors import AIPortalError

STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}"
         "figure{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
         "figcaption{font-weight:bold;margin-bottom:.3em}pre{background:#f4f4f4;padding:.8em;overflow-x:auto}"
         ".alarm{color:#c62828;font-weight:bold}")


def rolling(edits: list[bool], window: int) -> list[float]:
    """The edit rate over the last ``window`` decisions, at each decision from the window-th on."""
    return [sum(edits[end - window:end]) / window for end in range(window, len(edits) + 1)]


def model_charts(figures: list[ModelFigures], window: int) -> list[str]:
    """The governance charts, shared by the report page and the server's dashboard."""
    names = [f"{item.model_id} {item.model_version}".strip() for item in figures]
    charts = [stacked_bars("Reader decisions per model", [
        (name, {"accepted": item.accepted, "modified": item.modified, "rejected": item.rejected})
        for name, item in zip(names, figures, strict=True) if item.decisions])]
    for name, item in zip(names, figures, strict=True):
        rates = rolling(item.edits, window)
        if not rates:
            continue
        dashed = []
        if len(item.edits) >= 2 * window:  # the rule's baseline and limit, as they stand now
            baseline = item.edits[:-window]
            p0 = sum(baseline) / len(baseline)
            dashed = [("baseline", [p0] * len(rates)),
                      ("alarm limit", [min(1.0, drift_limit(p0, len(baseline), window))] * len(rates))]
        charts.append(lines(f"{name}: edit rate over the last {window} decisions ({item.drift})",
                            [(name, rates)], (0.0, 1.0), dashed, "decisions in time order"))
    dices = [dice for item in figures for dice in item.dices]
    charts.append(histogram("Dice of the AI draft against the reader's final segment", dices, 10, (0.0, 1.0),
                            "Dice"))
    delays = [seconds / 60 for item in figures for seconds in item.delays_s]
    charts.append(histogram("Minutes from AI result to the reader's decision", delays, 12, None, "minutes"))
    return charts


def report_page(figures: list[ModelFigures], window: int) -> str:
    alarms = [f"{item.model_id} {item.model_version}" for item in figures if item.drift == "alarm"]
    alarm_line = (f'<p class="alarm">Drift alarm: {escape(", ".join(alarms))}</p>' if alarms
                  else "<p>No drift alarm.</p>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AI Portal governance report"
            f"</title><style>{STYLE}</style></head><body><h1>AI Portal governance report</h1>{alarm_line}"
            f"<pre>{escape(table(figures, window))}</pre>"
            f"<p>Drift rule: the edit rate (modified or rejected) of the last {window} decisions sounds the alarm "
            "above the earlier decisions' rate plus three binomial standard errors.</p>"
            + "".join(model_charts(figures, window)) + "</body></html>\n")


def write_report_page(figures: list[ModelFigures], window: int, path: Path) -> None:
    try:
        Path(path).write_text(report_page(figures, window), encoding="utf-8")
    except OSError as error:
        raise AIPortalError(f"cannot write the report page {path}: {error.strerror}",
                            "choose a writable --html path") from error
