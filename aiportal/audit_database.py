"""The audit's anchor in a database: a copy of every record's number, time, hash and MAC in the
server's own database (SQLite by default, PostgreSQL for several machines), away from the log file.

The file anchor (:mod:`aiportal.audit_chain`) stops someone who can write the log's folder but not
the key. Whoever holds the key *and* the file system (the account the server runs as) could still
rewrite the log, its head and its file anchor consistently; the database anchor is a second
trust domain (its own credentials, its own backups) that such a rewrite does not reach:
``aiportal audit verify`` compares the log with it record by record and names what is MISSING
(the log is gone), truncated (the database holds records past the log's end) or edited (a
record's hash differs from the database's copy).

Set ``AIPORTAL_AUDIT_DATABASE_URL`` (the inference server sets it to its own database) and
every append also writes its anchor row; a log without rows in the database verifies as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiportal.errors import AIPortalError

DATABASE_URL_VARIABLE = "AIPORTAL_AUDIT_DATABASE_URL"
_tables: dict[str, Any] = {}
_engines: dict[str, Any] = {}


def log_identity(log_path: Path) -> str:
    """The name of a log in the database: its absolute path, hashed (no path is stored)."""
    return hashlib.sha256(str(Path(log_path).resolve()).encode()).hexdigest()[:24]


def _table():
    if "anchors" not in _tables:
        import sqlalchemy as sa

        metadata = sa.MetaData()
        _tables["anchors"] = sa.Table(
            "audit_anchors", metadata,
            sa.Column("log_id", sa.String(24), primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("day", sa.String(10), nullable=False),  # UTC date of the record, for per-day checks
            sa.Column("event", sa.String(20), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False),
            sa.Column("mac", sa.String(64), nullable=False),
        )
        _tables["metadata"] = metadata
    return _tables["anchors"]


@dataclass(frozen=True)
class DatabaseAnchors:
    """The anchor rows of the audit logs in one database."""

    url: str

    @property
    def engine(self):
        if self.url not in _engines:
            from aiportal.database import make_engine

            engine = make_engine(self.url)
            _table()
            _tables["metadata"].create_all(engine, checkfirst=True)
            _engines[self.url] = engine
        return _engines[self.url]

    def record(self, log_path: Path, record: dict[str, Any]) -> None:
        """Anchor one appended record (called under the log's lock)."""
        table = _table()
        try:
            with self.engine.begin() as connection:
                connection.execute(table.insert().values(
                    log_id=log_identity(log_path), seq=int(record["seq"]), day=str(record.get("time", ""))[:10],
                    event=str(record.get("event", "")), hash=record["hash"], mac=record.get("mac", "")))
        except AIPortalError:
            raise
        except Exception as error:
            raise AIPortalError(
                f"audit record {record['seq']} was written to the log but not anchored in the audit database "
                f"({type(error).__name__})",
                "check the database (AIPORTAL_AUDIT_DATABASE_URL) is reachable; `aiportal audit verify` will name "
                "the record until then") from error

    def anchors(self, log_path: Path) -> dict[int, tuple[str, str, str]]:
        """seq -> (hash, mac, day) of every anchored record of this log."""
        import sqlalchemy as sa

        table = _table()
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(table.c.seq, table.c.hash, table.c.mac, table.c.day)
                                      .where(table.c.log_id == log_identity(log_path))).fetchall()
        return {int(seq): (hash_, mac, day) for seq, hash_, mac, day in rows}

    def problems(self, log_path: Path, records: list[dict[str, Any]] | None,
                 digest: Callable[[dict[str, Any]], str] | None = None) -> list[str]:
        """What the log (None: the log is missing) lacks or changed against its database anchors;
        ``digest`` recomputes a record's hash (else its stored hash is compared)."""
        anchored = self.anchors(log_path)
        if not anchored:
            return []
        last = max(anchored)
        if records is None:
            return [f"log file is missing (the audit database anchors {len(anchored)} records, the last one "
                    f"{last})"]
        found: list[str] = []
        in_log = {int(record["seq"]): record for record in records if isinstance(record.get("seq"), int)}
        log_end = max(in_log, default=0)
        if log_end < last:
            found.append(f"the log is truncated: it ends at record {log_end} but the audit database anchors "
                         f"records up to {last} (on {anchored[last][2]})")
        removed = [seq for seq in anchored if seq <= log_end and seq not in in_log]
        if removed:
            found.append(f"{len(removed)} record(s) anchored in the audit database are missing from the log "
                         f"(first: {min(removed)})")
        edited = sorted(seq for seq, (hash_, _, _) in anchored.items() if seq in in_log
                        and (digest(in_log[seq]) if digest else in_log[seq].get("hash")) != hash_)
        for seq in edited[:10]:
            found.append(f"record {seq} differs from its copy in the audit database (edited, "
                         f"anchored on {anchored[seq][2]})")
        unanchored = sorted(seq for seq in in_log if seq not in anchored)
        if unanchored:
            found.append(f"{len(unanchored)} record(s) of the log have no anchor in the audit database "
                         f"(first: {unanchored[0]}; appended without it, or forged)")
        return found


def configured() -> DatabaseAnchors | None:
    """The anchors of ``AIPORTAL_AUDIT_DATABASE_URL``, or None when it is not set."""
    url = os.environ.get(DATABASE_URL_VARIABLE, "").strip()
    return DatabaseAnchors(url) if url else None


def anchor_audit_in(url: str) -> None:
    """Make every audit append of this process (and its children) anchor in ``url`` unless already set."""
    os.environ.setdefault(DATABASE_URL_VARIABLE, url)
