"""The audit's anchor in the server's database (issue 18): what even a holder of the audit key
cannot rewrite. Each attack rewrites the log, its head and its file anchor *with* the key, so
that the file-level chain is consistent; ``aiportal audit verify`` (a real CLI process) must
still name the log MISSING or TAMPERED from the database anchors. Runs on SQLite (the embedded
default) and on a real PostgreSQL (``postgres_server.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiportal.audit import GENESIS, AuditLog, _digest
from aiportal.audit_chain import anchor_path, audit_key, mac, write_anchor

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'server.db'}"
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from postgres_server import PostgresServer, missing_requirements

    if missing := missing_requirements():
        pytest.fail(missing)
    postgres = PostgresServer().start()
    yield postgres.url
    postgres.stop()


@pytest.fixture
def anchored(database_url, monkeypatch):
    monkeypatch.setenv("AIPORTAL_AUDIT_DATABASE_URL", database_url)
    return database_url


def _log(tmp_path, count=5) -> AuditLog:
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    for n in range(count):
        log.append("ai_run", run_id=f"run{n}", model_id="classic-ct", study_uid=f"1.2.3.{n}", user="reader")
    return log


def _verify(log: AuditLog, database_url: str | None) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if key != "AIPORTAL_AUDIT_DATABASE_URL"}
    if database_url:
        env["AIPORTAL_AUDIT_DATABASE_URL"] = database_url
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "audit", "--log", str(log.path), "verify"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _rewrite_with_the_key(log: AuditLog, records: list[dict]) -> None:
    """What the server's own account can do: renumber, re-hash, re-MAC, new head and file anchor."""
    key, previous, lines = audit_key(), GENESIS, []
    for seq, record in enumerate(records, start=1):
        record = {k: v for k, v in record.items() if k != "mac"} | {"seq": seq, "prev_hash": previous}
        record["hash"] = previous = _digest(record)
        record["mac"] = mac(key, record["hash"])
        lines.append(json.dumps(record, sort_keys=True) + "\n")
    log.path.write_text("".join(lines))
    log.head_path.write_text(json.dumps({"seq": len(records), "hash": previous}))
    write_anchor(log.path, key, len(records), previous)


def test_every_append_is_anchored_and_an_intact_log_verifies(tmp_path, anchored):
    from aiportal.audit_database import configured

    log = _log(tmp_path)
    rows = configured().anchors(log.path)
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert [rows[r["seq"]][0] for r in log.records()] == [r["hash"] for r in log.records()]
    code, out, err = _verify(log, anchored)
    assert code == 0 and "INTACT, 5 records" in out, err


def test_a_truncated_log_rewritten_with_the_key_is_tampered(tmp_path, anchored):
    log = _log(tmp_path)
    _rewrite_with_the_key(log, log.records()[:3])
    assert _verify(log, None)[0] == 0  # the file anchor alone cannot see it: the key rewrote it too
    code, _, err = _verify(log, anchored)
    assert code == 1 and "TAMPERED" in err and "truncated: it ends at record 3" in err and "up to 5" in err, err


def test_an_edited_log_rewritten_with_the_key_is_tampered(tmp_path, anchored):
    log = _log(tmp_path)
    records = log.records()
    records[1]["user"] = "someone-else"
    _rewrite_with_the_key(log, records)
    assert _verify(log, None)[0] == 0
    code, _, err = _verify(log, anchored)
    assert code == 1 and "record 2 differs from its copy in the audit database" in err, err
    assert "record 3 differs" in err  # re-linking changed every later hash too


def test_a_deleted_log_head_and_anchor_folder_is_missing(tmp_path, anchored):
    log = _log(tmp_path)
    log.path.unlink()
    log.head_path.unlink()
    shutil.rmtree(anchor_path(log.path).parent)
    assert _verify(log, None)[1].endswith("EMPTY, 0 records\n")  # without the database: nothing to go by
    code, _, err = _verify(log, anchored)
    assert code == 1 and "is MISSING" in err and "anchors 5 records, the last one 5" in err, err


def test_a_record_appended_without_the_database_is_named(tmp_path, anchored, monkeypatch):
    log = _log(tmp_path, 2)
    monkeypatch.delenv("AIPORTAL_AUDIT_DATABASE_URL")
    log.append("review", run_id="run0", segment="liver", decision="accepted", user="forger")
    code, _, err = _verify(log, anchored)
    assert code == 1 and "1 record(s) of the log have no anchor in the audit database (first: 3" in err, err


def test_an_unreachable_database_fails_the_append_loudly(tmp_path, monkeypatch):
    from aiportal.errors import AIPortalError

    monkeypatch.setenv("AIPORTAL_AUDIT_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(AIPortalError, match="not anchored in the audit database"):
        log.append("ai_run", run_id="r", model_id="m")
