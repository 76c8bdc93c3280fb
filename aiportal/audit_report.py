"""Governance figures from the audit trail, per model and version: runs, the readers' accepted /
modified / rejected rates, how much readers change the AI's segment (Dice and volume change
between the AI draft and the reader's final segment, :mod:`aiportal.review_drafts`), silent-pilot
concordance, time from the AI result to the reader's decision, and a drift alarm.

Drift rule (stated, not tuned): the *edit rate* is the share of decisions that are "modified" or
"rejected". The baseline is the rate over all decisions before the last ``window``; the alarm
sounds when the last ``window`` decisions' rate exceeds the baseline by more than three binomial
standard errors, ``p_window > p0 + 3·sqrt(p0·(1−p0)/window)``, with at least ``window`` decisions
in the baseline (else "not enough data").

Silent pilot: runs the server's PACS dispatcher made without pushing (``via: silent-pilot``);
their *concordance* is the share of the readers' decisions that accepted the AI's segment
unchanged, with the median Dice of draft against final.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
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
    median_dice: float | None = None  # AI draft vs the reader's final segment, decisions with a kept draft
    median_volume_change: float | None = None  # (final - draft) / draft
    pilot_runs: int = 0
    pilot_decisions: int = 0
    pilot_concordance: float | None = None  # share of silent-pilot decisions that accepted unchanged
    pilot_median_dice: float | None = None
    # per decision in time order, for the HTML page's plots
    edits: list[bool] = field(default_factory=list, repr=False)
    dices: list[float] = field(default_factory=list, repr=False)
    delays_s: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key not in ("edits", "dices", "delays_s")}


def _seconds(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def drift_limit(p0: float, baseline_count: int, window: int) -> float:
    """The edit rate above which the last ``window`` decisions sound the alarm."""
    return p0 + DRIFT_SIGMAS * math.sqrt(max(p0 * (1 - p0), 1.0 / baseline_count) / window)


def drift_verdict(edits: list[bool], window: int) -> tuple[float | None, float | None, str]:
    """(window edit rate, baseline edit rate, verdict) of decisions in time order (True: edited)."""
    if len(edits) < 2 * window:
        return None, None, "not enough data"
    baseline, recent = edits[:-window], edits[-window:]
    p0, p = sum(baseline) / len(baseline), sum(recent) / window
    return p, p0, "alarm" if p > drift_limit(p0, len(baseline), window) else "ok"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def governance(records: list[dict[str, Any]], window: int = 20) -> list[ModelFigures]:
    runs: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "ai_run" and record.get("run_id"):
            runs[record["run_id"]] = record
    per_model: dict[tuple[str, str], dict[str, list]] = {}
    for run in runs.values():
        key = (str(run.get("model_id", "")), str(run.get("model_version", "")))
        per_model.setdefault(key, {"runs": [], "reviews": [], "delays": []})["runs"].append(run)
    for record in records:
        run = runs.get(record.get("run_id", "")) if record.get("event") == "review" else None
        if run is None:
            continue
        bucket = per_model[(str(run.get("model_id", "")), str(run.get("model_version", "")))]
        bucket["reviews"].append((record, run.get("via") == "silent-pilot"))
        delay = _seconds(run.get("finished", ""), record.get("time", ""))
        if delay is not None:
            bucket["delays"].append(delay)
    figures = []
    for (model_id, version), bucket in sorted(per_model.items()):
        decisions = [record["decision"] for record, _ in bucket["reviews"]]
        count = len(decisions)

        def share(kind: str, decisions=decisions, count=count) -> float:
            return decisions.count(kind) / count if count else 0.0

        edits = [decision != "accepted" for decision in decisions]
        window_rate, baseline_rate, verdict = drift_verdict(edits, window)
        dices = [float(r["draft_dice"]) for r, _ in bucket["reviews"] if r.get("draft_dice") is not None]
        changes = [float(r["volume_change"]) for r, _ in bucket["reviews"] if r.get("volume_change") is not None]
        pilot = [record for record, in_pilot in bucket["reviews"] if in_pilot]
        pilot_dices = [float(r["draft_dice"]) for r in pilot if r.get("draft_dice") is not None]
        figures.append(ModelFigures(
            model_id, version, len(bucket["runs"]), count, share("accepted"), share("modified"), share("rejected"),
            _median(bucket["delays"]), window_rate, baseline_rate, verdict, _median(dices), _median(changes),
            sum(run.get("via") == "silent-pilot" for run in bucket["runs"]), len(pilot),
            sum(r["decision"] == "accepted" for r in pilot) / len(pilot) if pilot else None,
            _median(pilot_dices), edits, dices, bucket["delays"]))
    return figures


def _percent(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.0%}" if signed else f"{value:.0%}")


def table(figures: list[ModelFigures], window: int) -> str:
    lines = [f"{'model':<22} {'version':<10} {'runs':>5} {'decided':>7} {'accept':>7} {'modify':>7} "
             f"{'reject':>7} {'median s':>9} {'Dice':>6} {'vol Δ':>6} {'pilot':>11}  "
             f"drift (edit rate, last {window} vs before)"]
    for item in figures:
        median = f"{item.median_decision_s:.0f}" if item.median_decision_s is not None else "-"
        dice = f"{item.median_dice:.3f}" if item.median_dice is not None else "-"
        pilot = f"{_percent(item.pilot_concordance)} of {item.pilot_decisions}" if item.pilot_decisions else "-"
        drift = item.drift if item.window_edit_rate is None else (
            f"{item.drift} ({item.window_edit_rate:.0%} vs {item.baseline_edit_rate:.0%})")
        lines.append(f"{item.model_id:<22} {item.model_version:<10} {item.runs:>5} {item.decisions:>7} "
                     f"{item.accepted:>7.0%} {item.modified:>7.0%} {item.rejected:>7.0%} {median:>9} {dice:>6} "
                     f"{_percent(item.median_volume_change, True):>6} {pilot:>11}  {drift}")
    return "\n".join(lines)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=20, help="decisions in the drift window (default 20)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--html", type=Path, metavar="FILE",
                        help="also write a self-contained HTML page with the figures as charts")


def report_command(records: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """``aiportal audit report``: the table (or JSON) on stdout, optionally the HTML page."""
    figures = governance(records, args.window)
    print(json.dumps([item.as_dict() for item in figures], indent=2) if args.json else table(figures, args.window))
    if args.html:
        from aiportal.audit_html import write_report_page

        write_report_page(figures, args.window, args.html)
        if not args.json:
            print(f"wrote {args.html}")
    return 0
