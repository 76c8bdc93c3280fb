"""The audit trail: one record per AI run, per export and per reader decision.

Append-only JSON lines. Each record carries the SHA-256 of the previous record and its own
SHA-256 over its canonical JSON, so editing, removing or reordering a record breaks the chain;
a small ``.head`` file next to the log holds the last sequence number and hash, so removing
records from the end is detected too. Appends from several processes are serialised with a lock.
Each record also carries an HMAC of its hash under a key kept outside the log, and an anchor
outside the log's folder names the last record (:mod:`aiportal.audit_chain`): without the key an
edited chain cannot be recomputed, and a deleted or truncated log verifies as MISSING/TAMPERED.
With ``AIPORTAL_AUDIT_DATABASE_URL`` (the server's own database) every record is also anchored
there (:mod:`aiportal.audit_database`), which even a holder of the key cannot rewrite.
Records hold UIDs, model and run facts — no patient names or IDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiportal.audit_chain import (
    EMPTY,
    INTACT,
    MISSING,
    TAMPERED,
    anchor_ok,
    audit_key,
    mac,
    mac_ok,
    read_anchor,
    write_anchor,
)
from aiportal.audit_database import configured as configured_anchors
from aiportal.errors import AIPortalError
from aiportal.provenance import REVIEW_STATES, now_iso

EventKind = Literal["ai_run", "export", "review"]
GENESIS = "0" * 64
REVIEW_DECISIONS = tuple(state for state in REVIEW_STATES if state != "suggested")


def _digest(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key not in ("hash", "mac")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    line: int  # 1-based line in the log; 0 for the head file
    problem: str


class AuditLog:
    """An append-only, hash-chained JSON-lines audit log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _head(self) -> tuple[int, str]:
        if not self.head_path.is_file():
            return 0, GENESIS
        head = json.loads(self.head_path.read_text())
        return int(head["seq"]), str(head["hash"])

    def append(self, event: EventKind, **fields: Any) -> dict[str, Any]:
        """Add one record; returns it with its sequence number and hashes."""
        with self._locked():
            seq, previous = self._head()
            record = {"seq": seq + 1, "time": now_iso(), "event": event, **fields, "prev_hash": previous}
            record["hash"] = _digest(record)
            key = audit_key()
            record["mac"] = mac(key, record["hash"])
            line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(line)
                log.flush()
                os.fsync(log.fileno())
            temporary = self.head_path.with_name(self.head_path.name + ".tmp")
            temporary.write_text(json.dumps({"seq": record["seq"], "hash": record["hash"]}))
            temporary.replace(self.head_path)  # atomic: the head never points past the log
            write_anchor(self.path, key, record["seq"], record["hash"])
            if (database := configured_anchors()) is not None:
                database.record(self.path, record)
        return record

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as log:
            return [json.loads(line) for line in log if line.strip()]

    def records_lenient(self) -> list[dict[str, Any]]:
        """The records that still parse (a damaged line is skipped; :meth:`status` reports it)."""
        parsed = []
        with open(self.path, encoding="utf-8") as log:
            for line in log:
                with contextlib.suppress(json.JSONDecodeError):
                    if isinstance(record := json.loads(line), dict):
                        parsed.append(record)
        return parsed

    def verify(self) -> list[ChainProblem]:
        """Every break in the chain, its MACs or its anchor; an empty list means the log is intact."""
        return self.status()[1]

    def status(self) -> tuple[str, list[ChainProblem]]:
        """(INTACT, EMPTY, MISSING or TAMPERED; the problems found)."""
        key, anchor = audit_key(create=False), read_anchor(self.path)
        database = configured_anchors()
        if not self.path.is_file():
            if database is not None and (lost := database.problems(self.path, None)):
                return MISSING, [ChainProblem(0, lost[0])]
            if anchor is not None or self.head_path.is_file():
                seq = anchor.seq if anchor else self._head()[0]
                return MISSING, [ChainProblem(0, f"log file is missing (its anchor names record {seq})")]
            return EMPTY, []
        problems: list[ChainProblem] = []
        previous, expected_seq = GENESIS, 1
        with open(self.path, encoding="utf-8") as log:
            for number, line in enumerate(log, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    problems.append(ChainProblem(number, "not valid JSON (edited or damaged)"))
                    previous = GENESIS
                    continue
                if record.get("hash") != _digest(record):
                    problems.append(ChainProblem(number, f"record {record.get('seq')} was modified"))
                elif key is None or not mac_ok(key, record["hash"], record.get("mac")):
                    problems.append(ChainProblem(number, f"record {record.get('seq')} has no valid MAC (written "
                                                         "without the audit key, or forged)"))
                if record.get("prev_hash") != previous:
                    problems.append(ChainProblem(number, f"record {record.get('seq')} does not follow its "
                                                         "predecessor (a record before it was removed or changed)"))
                if record.get("seq") != expected_seq:
                    problems.append(ChainProblem(number, f"sequence jumps to {record.get('seq')}, "
                                                         f"expected {expected_seq}"))
                previous, expected_seq = record.get("hash", ""), int(record.get("seq", expected_seq)) + 1
        head_seq, head_hash = self._head()
        if (head_seq, head_hash) != (expected_seq - 1, previous):
            problems.append(ChainProblem(0, f"the log ends at record {expected_seq - 1} but its head says "
                                            f"{head_seq}: records were removed from the end or the head was changed"))
        if anchor is None:
            problems.append(ChainProblem(0, "the log has no anchor (it was removed, or the log was copied here)"))
        elif key is None or not anchor_ok(key, anchor):
            problems.append(ChainProblem(0, "the anchor's MAC is wrong (the anchor was edited)"))
        elif (anchor.seq, anchor.hash) != (expected_seq - 1, previous):
            problems.append(ChainProblem(0, f"the anchor names record {anchor.seq} but the log ends at record "
                                            f"{expected_seq - 1}: records were removed from the end"))
        if database is not None:
            found = database.problems(self.path, self.records_lenient(), _digest)
            problems += [ChainProblem(0, problem) for problem in found]
        return (TAMPERED if problems else INTACT), problems

    def check(self) -> None:
        """Raise when the chain is broken."""
        problems = self.verify()
        if problems:
            first = problems[0]
            raise AIPortalError(
                f"audit log {self.path} fails its integrity check at line {first.line}: {first.problem} "
                f"({len(problems)} problem(s))",
                "keep the file as evidence and restore the log from a backup",
            )


def record_review(log: AuditLog, run_id: str, segment: str, decision: str, user: str, **fields: Any) -> dict:
    """The reader's accept / modify / reject of one AI segment."""
    if decision not in REVIEW_DECISIONS:
        raise AIPortalError(f"unknown review decision {decision!r}", f"use one of: {', '.join(REVIEW_DECISIONS)}")
    return log.append("review", run_id=run_id, segment=segment, decision=decision, user=user, **fields)


def ai_run_fields(result, input_name: str, source_reference: dict | None = None) -> dict[str, Any]:
    """What the audit keeps of an AI run (a :class:`aiportal.segment.SegmentationResult`): UIDs,
    model, parameters, device, user, times — no PHI. Every face records its runs with these."""
    provenance, source = result.provenance, source_reference or {}
    return {"run_id": provenance.run_id, "input": input_name,
            "study_uid": source.get("study_uid", ""), "series_uid": source.get("series_uid", ""),
            "model_id": provenance.model_id, "model_version": provenance.model_version,
            "weights_sha256": provenance.weights_sha256, "parameters": provenance.parameters,
            "device": provenance.device, "user": provenance.user, "started": provenance.started,
            "finished": provenance.finished}
