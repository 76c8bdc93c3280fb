"""The keyed, anchored audit chain (issue 18): a deleted, truncated or re-hashed log does not verify.

Each attack is what someone who can write the log's folder, but does not hold the audit key, can
do; ``aiportal audit verify`` runs as a real CLI process and must name the state and exit 1.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aiportal.audit import GENESIS, AuditLog, _digest
from aiportal.errors import AIPortalError

REPO = Path(__file__).resolve().parent.parent


def _log(tmp_path, count=5) -> AuditLog:
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    for n in range(count):
        log.append("ai_run", run_id=f"run{n}", model_id="classic-ct", study_uid=f"1.2.3.{n}", user="reader")
    return log


def _verify(log: AuditLog) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log.path), "verify"],
                          capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=120)
    return done.returncode, done.stdout, done.stderr


def _rechain(records: list[dict]) -> list[str]:
    """What a forger without the key does: renumber, re-hash and re-link every record."""
    previous, lines = GENESIS, []
    for seq, record in enumerate(records, start=1):
        record = dict(record, seq=seq, prev_hash=previous)
        record["hash"] = previous = _digest(record)
        lines.append(json.dumps(record, sort_keys=True) + "\n")
    return lines


def test_intact_and_empty_logs_verify(tmp_path):
    assert _verify(AuditLog(tmp_path / "none" / "audit.jsonl"))[:2] == (0, f"{tmp_path}/none/audit.jsonl: EMPTY, "
                                                                           "0 records\n")
    log = _log(tmp_path)
    code, out, err = _verify(log)
    assert code == 0 and "INTACT, 5 records" in out, err
    assert all(len(record["mac"]) == 64 for record in log.records())


def test_deleted_log_and_head_verify_as_missing(tmp_path):
    log = _log(tmp_path)
    log.path.unlink()
    log.head_path.unlink()
    code, _, err = _verify(log)
    assert code == 1 and "is MISSING" in err and "record 5" in err, err


def test_truncated_log_with_rewritten_head_is_tampered(tmp_path):
    log = _log(tmp_path)
    records = log.records()[:3]
    log.path.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
    log.head_path.write_text(json.dumps({"seq": 3, "hash": records[-1]["hash"]}))  # a consistent head
    code, _, err = _verify(log)
    assert code == 1 and "is TAMPERED" in err and "anchor names record 5" in err, err


def test_edited_and_rechained_log_is_tampered_without_the_key(tmp_path):
    log = _log(tmp_path)
    records = log.records()
    records[1]["user"] = "someone-else"
    lines = _rechain(records)
    log.path.write_text("".join(lines))
    last = json.loads(lines[-1])
    log.head_path.write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    code, _, err = _verify(log)
    assert code == 1 and "TAMPERED" in err and "line 2: record 2 has no valid MAC" in err, err
    with pytest.raises(AIPortalError, match="integrity check"):
        log.check()


def test_a_log_with_a_removed_record_and_all_macs_dropped_is_tampered(tmp_path):
    log = _log(tmp_path)
    records = [{k: v for k, v in record.items() if k != "mac"} for record in log.records()]
    del records[2]
    log.path.write_text("".join(_rechain(records)))
    code, _, err = _verify(log)
    assert code == 1 and err.count("has no valid MAC") == 4, err


def test_edited_anchor_is_tampered(tmp_path):
    from aiportal.audit_chain import anchor_path

    log = _log(tmp_path)
    anchor = anchor_path(log.path)
    body = json.loads(anchor.read_text())
    anchor.write_text(json.dumps(dict(body, seq=4)))
    code, _, err = _verify(log)
    assert code == 1 and "anchor's MAC is wrong" in err, err
    anchor.unlink()
    code, _, err = _verify(log)
    assert code == 1 and "no anchor" in err, err


def test_the_key_file_is_made_owner_only_and_a_readable_one_is_refused(tmp_path, monkeypatch):
    from aiportal.audit_chain import audit_key

    monkeypatch.delenv("AIPORTAL_AUDIT_KEY", raising=False)
    monkeypatch.setenv("AIPORTAL_AUDIT_KEY_FILE", str(tmp_path / "keys" / "audit.key"))
    key = audit_key()
    path = tmp_path / "keys" / "audit.key"
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600 and audit_key() == key
    log = _log(tmp_path)
    assert log.status()[0] == "INTACT"
    path.chmod(0o644)
    with pytest.raises(AIPortalError, match="chmod 600"):
        log.append("export", run_id="x", outputs=[])
    monkeypatch.setenv("AIPORTAL_AUDIT_KEY", "another-key")  # a log checked with the wrong key
    assert log.status()[0] == "TAMPERED"
