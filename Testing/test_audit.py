"""The audit trail detects edits, removals and reordering, and survives concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from aiportal.audit import AuditLog, record_review
from aiportal.errors import AIPortalError


def _log_with_records(tmp_path, count=5) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for n in range(count):
        log.append("ai_run", run_id=f"run{n}", model_id="classic-ct", study_uid=f"1.2.3.{n}", user="reader")
    return log


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines))


def test_intact_log_verifies(tmp_path):
    log = _log_with_records(tmp_path)
    record_review(log, "run2", "Left lung", "accepted", "reader")
    assert log.verify() == []
    records = log.records()
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["event"] == "review" and records[-1]["prev_hash"] == records[-2]["hash"]
    log.check()


def test_edited_record_is_detected(tmp_path):
    log = _log_with_records(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["model_id"] = "something-else"  # a quiet edit, hash left as it was
    lines[2] = json.dumps(record, sort_keys=True) + "\n"
    _rewrite(log, lines)
    problems = log.verify()
    assert any(p.line == 3 and "modified" in p.problem for p in problems)
    with pytest.raises(AIPortalError, match="integrity check at line 3"):
        log.check()


def test_edit_with_recomputed_hash_still_breaks_the_chain(tmp_path):
    from aiportal.audit import _digest

    log = _log_with_records(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["user"] = "someone"
    record["hash"] = _digest(record)  # a careful forger re-hashes the record ...
    lines[1] = json.dumps(record, sort_keys=True) + "\n"
    _rewrite(log, lines)
    assert any(p.line == 3 and "predecessor" in p.problem for p in log.verify())  # ... the next one no longer fits


@pytest.mark.parametrize("where", [0, 2, 4])
def test_removed_record_is_detected(tmp_path, where):
    log = _log_with_records(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    del lines[where]
    _rewrite(log, lines)
    assert log.verify(), f"removing record {where + 1} went unnoticed"


def test_reordered_records_are_detected(tmp_path):
    log = _log_with_records(tmp_path)
    lines = log.path.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log, lines)
    assert log.verify()


def test_unknown_review_decision_is_refused(tmp_path):
    with pytest.raises(AIPortalError, match="accepted, modified, rejected"):
        record_review(AuditLog(tmp_path / "a.jsonl"), "run", "Bone", "maybe", "reader")


def _append_many(path, writer, count):
    log = AuditLog(path)
    for n in range(count):
        log.append("export", run_id=f"{writer}-{n}", outputs=[])


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(path, w, 40)) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    log = AuditLog(path)
    assert len(log.records()) == 120
    assert log.verify() == []
