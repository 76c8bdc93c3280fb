"""The audit log's key and anchor: what makes its hash chain tamper-evident against someone who can
write the log.

- **Key**: every record carries ``mac`` = HMAC-SHA256(key, its hash). Without the key nobody can
  edit a record and recompute the chain. The key lives outside the log: ``AIPORTAL_AUDIT_KEY``
  (the secret itself, e.g. from a secrets manager), else ``AIPORTAL_AUDIT_KEY_FILE``, else
  ``~/.config/aiportal/audit.key``, made on first use with owner-only permissions (a key file
  that others can read is refused).
- **Anchor**: after each append the last record's number and hash, with their MAC, go to an
  anchor file in another folder (``AIPORTAL_AUDIT_ANCHOR_DIR``, default
  ``~/.config/aiportal/audit-anchors``). Deleting the log, or cutting records off its end and
  rewriting its ``.head``, no longer verifies: the anchor still names the last record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from aiportal.errors import AIPortalError

INTACT, EMPTY, MISSING, TAMPERED = "INTACT", "EMPTY", "MISSING", "TAMPERED"


def _config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "aiportal"


def audit_key(create: bool = True) -> bytes | None:
    """The HMAC key; made (owner-only) when ``create`` and none exists, else None."""
    if secret := os.environ.get("AIPORTAL_AUDIT_KEY"):
        return secret.encode()
    path = Path(os.environ.get("AIPORTAL_AUDIT_KEY_FILE") or _config_home() / "audit.key")
    if path.is_file():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AIPortalError(f"the audit key {path} can be read by other users",
                                f"run `chmod 600 {path}`; if others did read it, the log can no longer be trusted")
        return path.read_bytes().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def mac(key: bytes, record_hash: str) -> str:
    return hmac.new(key, record_hash.encode(), hashlib.sha256).hexdigest()


def mac_ok(key: bytes, record_hash: str, claimed: str | None) -> bool:
    return bool(claimed) and hmac.compare_digest(mac(key, record_hash), str(claimed))


def anchor_path(log_path: Path) -> Path:
    """One anchor per log, named after the log's absolute path, in a folder away from the log."""
    folder = Path(os.environ.get("AIPORTAL_AUDIT_ANCHOR_DIR") or _config_home() / "audit-anchors")
    name = hashlib.sha256(str(Path(log_path).resolve()).encode()).hexdigest()[:24]
    return folder / f"{name}.json"


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    mac: str


def write_anchor(log_path: Path, key: bytes, seq: int, record_hash: str) -> None:
    path = anchor_path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"log": str(Path(log_path).resolve()), "seq": seq, "hash": record_hash,
                                     "mac": mac(key, f"{seq}:{record_hash}")}))
    temporary.replace(path)


def read_anchor(log_path: Path) -> Anchor | None:
    path = anchor_path(log_path)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        return Anchor(int(body["seq"]), str(body["hash"]), str(body["mac"]))
    except (ValueError, KeyError, TypeError):
        return Anchor(-1, "", "")  # unreadable: reported as tampered


def anchor_ok(key: bytes, anchor: Anchor) -> bool:
    return mac_ok(key, f"{anchor.seq}:{anchor.hash}", anchor.mac)
