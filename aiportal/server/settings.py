"""The inference server's settings: one frozen object, from the environment or the command line.

Every value has an ``AIPORTAL_SERVER_*`` environment variable so that the API server and its
Celery workers (separate processes, possibly separate machines) read the same configuration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from aiportal.errors import AIPortalError
from aiportal.server.roles import OIDC_ROLE_SCOPES

EngineMode = Literal["embedded", "celery"]
Executor = Literal["process", "thread"]

#: Default mapping of identity-provider roles to server scopes (override with AIPORTAL_SERVER_OIDC_ROLES).
DEFAULT_ROLE_SCOPES = OIDC_ROLE_SCOPES


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME")
    return (Path(base) if base else Path.home() / ".local" / "share") / "aiportal" / "server"


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path = field(default_factory=_data_home)  # uploads, results, the SQLite database
    database_url: str = ""  # empty: sqlite:///DATA_DIR/server.db; or postgresql+psycopg://...
    engine: EngineMode = "embedded"
    workers: int = 2  # embedded worker threads (each runs one job at a time)
    executor: Executor = "process"  # model runs in a child process (isolation, hard cancel) or a thread
    broker_url: str = "redis://127.0.0.1:6379/0"  # Celery mode: Redis or RabbitMQ (amqp://)
    max_upload_mb: float = 1024.0
    max_bundle_mb: float = 20480.0  # a weights bundle uploaded by an administrator (POST /v1/admin/weights)
    rate_limit_per_minute: int = 120  # requests per client (key id or token subject)
    max_attempts: int = 2  # a job whose worker died is retried until this many attempts, then failed
    stale_after_s: float = 60.0  # a running job without a heartbeat this long lost its worker
    result_ttl_s: float = 7 * 24 * 3600.0  # results are deleted this long after the job finished
    fetched_ttl_s: float = 3600.0  # ... or this long after their first download, whichever is sooner
    job_timeout_s: float | None = None  # model run time-out
    pacs_endpoint: str = ""  # name of the PACS endpoint (aiportal.pacs.config) jobs pull from and push to
    dispatch_rules: str = ""  # JSON rules file: auto-dispatch new stable series from Orthanc (see .dispatch)
    deidentify: bool = False  # de-identify uploads before processing (needs aiportal.pacs.deidentify)
    oidc_issuer: str = ""  # bearer JWTs are accepted when issuer and JWKS URL are set
    oidc_jwks_url: str = ""
    oidc_audience: str = ""
    oidc_role_claim: str = "roles"  # dotted path, e.g. realm_access.roles (Keycloak)
    oidc_role_scopes: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_ROLE_SCOPES))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'server.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_bundle_bytes(self) -> int:
        return int(self.max_bundle_mb * 1024 * 1024)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_jwks_url)

    @classmethod
    def from_environment(cls, **overrides) -> ServerSettings:
        """Defaults, then ``AIPORTAL_SERVER_<FIELD>`` variables, then ``overrides`` (None values ignored)."""
        values: dict = {}
        for spec in fields(cls):
            raw = os.environ.get(f"AIPORTAL_SERVER_{spec.name.upper()}")
            if raw is not None and raw != "":
                values[spec.name] = _parse(spec.name, raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        settings = cls(**values)
        return settings.validated()

    def validated(self) -> ServerSettings:
        if self.engine not in ("embedded", "celery"):
            raise AIPortalError(f"unknown server engine {self.engine!r}", "use embedded or celery")
        if self.executor not in ("process", "thread"):
            raise AIPortalError(f"unknown executor {self.executor!r}", "use process or thread")
        if self.workers < 1 or self.max_attempts < 1:
            raise AIPortalError("workers and max_attempts must be at least 1", "fix the server settings")
        return replace(self, data_dir=Path(self.data_dir))

    def environment(self) -> dict[str, str]:
        """These settings as environment variables, for a Celery worker started by hand or by a test."""
        out = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[f"AIPORTAL_SERVER_{spec.name.upper()}"] = str(value)
        return out


_NUMBERS = {"workers": int, "rate_limit_per_minute": int, "max_attempts": int, "max_upload_mb": float,
            "max_bundle_mb": float,
            "stale_after_s": float, "result_ttl_s": float, "fetched_ttl_s": float, "job_timeout_s": float}


def _parse(name: str, raw: str):
    try:
        if name in _NUMBERS:
            return _NUMBERS[name](raw)
        if name == "deidentify":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if name == "oidc_role_scopes":
            return json.loads(raw)
        if name == "data_dir":
            return Path(raw)
    except ValueError as error:
        raise AIPortalError(f"AIPORTAL_SERVER_{name.upper()}={raw!r} is not valid: {error}",
                            "fix the environment variable") from error
    return raw
