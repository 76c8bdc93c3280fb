"""The one settings object: where things live and which defaults apply, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME")
    return (Path(base) if base else Path.home() / ".local" / "share") / "aiportal"


@dataclass(frozen=True)
class Settings:
    audit_log: Path  # append-only JSON lines; AIPORTAL_AUDIT_LOG overrides

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(audit_log=Path(os.environ.get("AIPORTAL_AUDIT_LOG") or _data_home() / "audit.jsonl"))
