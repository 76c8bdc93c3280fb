"""``aiportal audit report`` (issue 18): governance figures from the audit trail, per model and
version, and the edit-rate drift alarm under its stated rule. The log is written by the real audit
library (keyed chain), the report by the real CLI process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aiportal.audit import AuditLog, record_review
from aiportal.audit_report import drift_verdict, governance

REPO = Path(__file__).resolve().parent.parent


def _log(tmp_path) -> AuditLog:
    """classic-ct 1.0: 60 runs, the first 40 mostly accepted, the last 20 mostly edited (drift);
    lungmask 2.1: 50 runs at a steady 20 % edit rate (no drift)."""
    log = AuditLog(tmp_path / "audit.jsonl")
    for model, version, count, edited in (("classic-ct", "1.0", 60, lambda n: n % 10 == 0 if n < 40 else n % 5 != 0),
                                          ("lungmask", "2.1", 50, lambda n: n % 5 == 0)):
        for n in range(count):
            run_id = f"{model}-{n}"
            log.append("ai_run", run_id=run_id, model_id=model, model_version=version, user="reader",
                       started="2026-12-01T10:00:00+00:00", finished="2026-12-01T10:00:00+00:00")
            decision = ("rejected" if n % 3 == 0 else "modified") if edited(n) else "accepted"
            record_review(log, run_id, "Liver", decision, "reader")
    return log


def test_rates_and_drift_per_model(tmp_path):
    figures = {item.model_id: item for item in governance(_log(tmp_path).records(), window=20)}
    ct, lung = figures["classic-ct"], figures["lungmask"]
    assert (ct.runs, ct.decisions, lung.runs, lung.decisions) == (60, 60, 50, 50)
    assert abs(ct.accepted + ct.modified + ct.rejected - 1) < 1e-9
    assert ct.accepted == (36 + 4) / 60  # 36 of the first 40, 4 of the last 20
    assert lung.accepted == 40 / 50 and lung.modified + lung.rejected == 10 / 50
    assert ct.drift == "alarm" and ct.window_edit_rate == 16 / 20 and ct.baseline_edit_rate == 4 / 40
    assert lung.drift == "ok"
    assert ct.median_decision_s is not None and ct.median_decision_s > 0  # the decisions came after the runs


def test_drift_rule_needs_a_baseline_and_three_standard_errors():
    assert drift_verdict([False] * 30, 20)[2] == "not enough data"
    assert drift_verdict([i % 5 == 0 for i in range(60)], 20)[2] == "ok"  # a steady 20 %
    baseline = [i % 5 == 0 for i in range(40)]  # 20 %: the limit is 0.2 + 3*sqrt(0.16/20) = 0.468
    assert drift_verdict(baseline + [i < 9 for i in range(20)], 20)[2] == "ok"  # 45 %
    assert drift_verdict(baseline + [i < 10 for i in range(20)], 20)[2] == "alarm"  # 50 %


def test_the_cli_prints_the_table_and_json(tmp_path):
    log = _log(tmp_path)
    command = [sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log.path), "report"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "alarm (80% vs 10%)" in rows["classic-ct"] and "ok" in rows["lungmask"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, cwd=REPO, env=os.environ.copy(),
                          timeout=120)
    assert {item["model_id"]: item["drift"] for item in json.loads(done.stdout)} == {"classic-ct": "alarm",
                                                                                     "lungmask": "ok"}


def _pilot_log(tmp_path) -> AuditLog:
    """classic-ct: 4 server runs and 4 silent-pilot runs; decisions with Dice / volume change of the draft."""
    log = AuditLog(tmp_path / "pilot.jsonl")
    outcomes = [("accepted", 1.0, 0.0), ("modified", 0.8, 0.25), ("accepted", 1.0, 0.0), ("rejected", 0.0, -1.0),
                ("accepted", 1.0, 0.0), ("accepted", 1.0, 0.0), ("modified", 0.9, 0.1), ("accepted", 1.0, 0.0)]
    for n, (decision, dice, change) in enumerate(outcomes):
        run_id = f"run-{n}"
        log.append("ai_run", run_id=run_id, model_id="classic-ct", model_version="1.0", user="reader",
                   via="silent-pilot" if n >= 4 else "server", finished="2026-12-01T10:00:00+00:00")
        record_review(log, run_id, "Liver", decision, "reader", draft_dice=dice, volume_change=change)
    return log


def test_dice_volume_change_and_silent_pilot_concordance(tmp_path):
    (figures,) = governance(_pilot_log(tmp_path).records(), window=20)
    assert figures.median_dice == 1.0 and figures.dices == [1.0, 0.8, 1.0, 0.0, 1.0, 1.0, 0.9, 1.0]
    assert figures.median_volume_change == 0.0
    assert (figures.pilot_runs, figures.pilot_decisions, figures.pilot_concordance) == (4, 4, 3 / 4)
    assert figures.pilot_median_dice == 1.0


def test_the_cli_writes_a_self_contained_html_page_with_charts(tmp_path):
    import xml.etree.ElementTree as ElementTree

    log = _log(tmp_path)
    page = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log.path), "report",
                           "--html", str(page)], capture_output=True, text=True, cwd=REPO, env=os.environ.copy(),
                          timeout=120)
    assert done.returncode == 0 and f"wrote {page}" in done.stdout, done.stderr
    html = page.read_text()
    assert "Drift alarm: classic-ct 1.0" in html and "src=" not in html and "<script" not in html
    svgs = [ElementTree.fromstring(html[start:html.index("</svg>", start) + 6])
            for start in [i for i in range(len(html)) if html.startswith("<svg", i)]]
    assert len(svgs) == 5  # decisions, two edit-rate lines, Dice, time to decision
    rates = [svg for svg in svgs if "edit rate" in svg.get("aria-label")]
    assert len(rates) == 2 and all(len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 3 for svg in rates)
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log.path), "report",
                           "--html", str(tmp_path / "no" / "such" / "report.html")], capture_output=True, text=True,
                          cwd=REPO, env=os.environ.copy(), timeout=120)
    assert done.returncode == 1 and "choose a writable --html path" in done.stderr
