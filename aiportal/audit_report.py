"""Governance figures from the audit trail, per model and version: runs, the readers' accepted /
modified / rejected rates, time from the AI result to the reader's decision, and a drift alarm.

Drift rule (stated, not tuned): the *edit rate* is the share of decisions that are "modified" or
"rejected". The baseline is the rate over all decisions before the last ``window``; the alarm
sounds when the last ``window`` decisions' rate exceeds the baseline by more than three binomial
standard errors, ``p_window > p0 + 3·sqrt(p0·(1−p0)/window)``, with at least ``window`` decisions
in the baseline (else "not enough data").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

DRIFT_SIGMAS = 3.0


@dataclass(frozen=True)
class ModelFigures:
    model_id: str
    model_version: str
    runs: int
    decisions: int
    accepted: float  # shares of decisions, 0..1
    modified: float
    rejected: float
    median_decision_s: float | None  # AI result -> reader's decision
    window_edit_rate: float | None
    baseline_edit_rate: float | None
    drift: str  # "alarm", "ok" or "not enough data"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def drift_verdict(edits: list[bool], window: int) -> tuple[float | None, float | None, str]:
    """(window edit rate, baseline edit rate, verdict) of decisions in time order (True: edited)."""
    if len(edits) < 2 * window:
        return None, None, "not enough data"
    baseline, recent = edits[:-window], edits[-window:]
    p0, p = sum(baseline) / len(baseline), sum(recent) / window
    limit = p0 + DRIFT_SIGMAS * math.sqrt(max(p0 * (1 - p0), 1.0 / len(baseline)) / window)
    return p, p0, "alarm" if p > limit else "ok"


def governance(records: list[dict[str, Any]], window: int = 20) -> list[ModelFigures]:
    runs: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "ai_run" and record.get("run_id"):
            runs[record["run_id"]] = record
    per_model: dict[tuple[str, str], dict[str, list]] = {}
    for run in runs.values():
        key = (str(run.get("model_id", "")), str(run.get("model_version", "")))
        per_model.setdefault(key, {"runs": [], "decisions": [], "delays": []})["runs"].append(run)
    for record in records:
        run = runs.get(record.get("run_id", "")) if record.get("event") == "review" else None
        if run is None:
            continue
        bucket = per_model[(str(run.get("model_id", "")), str(run.get("model_version", "")))]
        bucket["decisions"].append(record["decision"])
        delay = _seconds(run.get("finished", ""), record.get("time", ""))
        if delay is not None:
            bucket["delays"].append(delay)
    figures = []
    for (model_id, version), bucket in sorted(per_model.items()):
        decisions = bucket["decisions"]
        count = len(decisions)

        def share(kind: str, decisions=decisions, count=count) -> float:
            return decisions.count(kind) / count if count else 0.0

        window_rate, baseline_rate, verdict = drift_verdict([d != "accepted" for d in decisions], window)
        figures.append(ModelFigures(model_id, version, len(bucket["runs"]), count, share("accepted"),
                                    share("modified"), share("rejected"),
                                    statistics.median(bucket["delays"]) if bucket["delays"] else None,
                                    window_rate, baseline_rate, verdict))
    return figures


def table(figures: list[ModelFigures], window: int) -> str:
    lines = [f"{'model':<22} {'version':<10} {'runs':>5} {'decided':>7} {'accept':>7} {'modify':>7} "
             f"{'reject':>7} {'median s':>9}  drift (edit rate, last {window} vs before)"]
    for item in figures:
        median = f"{item.median_decision_s:.0f}" if item.median_decision_s is not None else "-"
        drift = item.drift if item.window_edit_rate is None else (
            f"{item.drift} ({item.window_edit_rate:.0%} vs {item.baseline_edit_rate:.0%})")
        lines.append(f"{item.model_id:<22} {item.model_version:<10} {item.runs:>5} {item.decisions:>7} "
                     f"{item.accepted:>7.0%} {item.modified:>7.0%} {item.rejected:>7.0%} {median:>9}  {drift}")
    return "\n".join(lines)
