"""PACS endpoints by name: a settings file plus environment variables.

The file is JSON, ``$AIPORTAL_PACS_CONFIG`` or ``$XDG_CONFIG_HOME/aiportal/pacs.json``::

    {"endpoints": {"hospital": {
        "dicomweb_url": "https://pacs.example.org/dicom-web", "auth": "basic", "username": "ai",
        "password_env": "HOSPITAL_PACS_PASSWORD", "ca_bundle": "/etc/ssl/hospital-ca.pem",
        "timeout_s": 30, "max_retrieve_mb": 4096,
        "dimse": {"ae_title": "PACS", "host": "pacs.example.org", "port": 104, "our_ae_title": "AIPORTAL"}}}}

Secrets are best kept out of the file: ``AIPORTAL_PACS_<NAME>_PASSWORD`` / ``_TOKEN`` override
it, and ``AIPORTAL_PACS_<NAME>_URL`` alone defines a DICOMweb endpoint (``<NAME>`` upper-cased,
other characters as ``_``). The small API at the end (list / add / remove / check) is what the
desktop settings panel calls.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from aiportal.pacs import PacsError

AuthKind = Literal["none", "basic", "bearer"]
AUTH_KINDS = ("none", "basic", "bearer")
Protocol = Literal["auto", "dicomweb", "dimse"]
PROTOCOLS = ("auto", "dicomweb", "dimse")  # auto: DICOMweb, DIMSE when DICOMweb cannot be reached


@dataclass(frozen=True)
class DimsePeer:
    """A DIMSE (DICOM network) peer and how we present ourselves to it."""

    ae_title: str
    host: str
    port: int
    our_ae_title: str = "AIPORTAL"
    our_port: int = 0  # our storage SCP for C-MOVE; 0: retrieve with C-GET only
    retrieve: Literal["get", "move"] = "get"
    listen_host: str = "0.0.0.0"  # where our C-MOVE storage SCP listens (the PACS must reach it)


@dataclass(frozen=True)
class PacsEndpoint:
    name: str
    dicomweb_url: str = ""  # e.g. https://pacs.example.org/dicom-web; empty: DIMSE only
    auth: AuthKind = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    password_env: str = ""  # environment variable holding the password (keeps it out of the file)
    token_env: str = ""
    verify_tls: bool = True
    ca_bundle: str = ""  # PEM file of a custom (hospital) CA; empty: the system's
    timeout_s: float = 30.0
    max_retrieve_mb: float = 4096.0  # a pull larger than this stops with an error
    retries: int = 3  # attempts on transient errors (connection lost, HTTP 429/5xx), with backoff
    backoff_s: float = 0.5  # first wait; doubles each attempt
    dimse: DimsePeer | None = None

    @property
    def has_dicomweb(self) -> bool:
        return bool(self.dicomweb_url)

    @property
    def has_dimse(self) -> bool:
        return self.dimse is not None

    def secret_password(self) -> str:
        return os.environ.get(self.password_env, "") if self.password_env else self.password

    def secret_token(self) -> str:
        return os.environ.get(self.token_env, "") if self.token_env else self.token

    def describe(self) -> str:
        """One line without secrets."""
        parts = []
        if self.dicomweb_url:
            parts.append(f"DICOMweb {self.dicomweb_url} (auth {self.auth}"
                         + (f" as {self.username}" if self.username else "") + ")")
        if self.dimse:
            parts.append(f"DIMSE {self.dimse.ae_title}@{self.dimse.host}:{self.dimse.port} "
                         f"as {self.dimse.our_ae_title}")
        return f"{self.name}: " + ("; ".join(parts) or "nothing configured")

    def validate(self) -> PacsEndpoint:
        """Refuse a configuration that cannot work, naming the setting to fix."""
        where = f"PACS endpoint {self.name!r}"
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise PacsError(f"PACS endpoint name {self.name!r} is not usable",
                            "use letters, digits, '.', '-' or '_' only")
        if not self.dicomweb_url and self.dimse is None:
            raise PacsError(f"{where} has neither a DICOMweb URL nor a DIMSE peer", "set dicomweb_url or dimse")
        if self.dicomweb_url and not re.match(r"https?://", self.dicomweb_url):
            raise PacsError(f"{where}: DICOMweb URL {self.dicomweb_url!r} is not http(s)",
                            "give the full base URL, e.g. https://pacs.example.org/dicom-web")
        if self.auth not in AUTH_KINDS:
            raise PacsError(f"{where}: unknown auth {self.auth!r}", f"use one of {', '.join(AUTH_KINDS)}")
        if self.auth == "basic" and not self.username:
            raise PacsError(f"{where} uses HTTP basic authentication without a username", "set username")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise PacsError(f"{where}: CA bundle {self.ca_bundle} does not exist",
                            "give the PEM file of the hospital's certificate authority")
        if self.dimse is not None:
            for title in (self.dimse.ae_title, self.dimse.our_ae_title):
                if not title or len(title) > 16:
                    raise PacsError(f"{where}: AE title {title!r} must have 1 to 16 characters", "fix the AE title")
            if not 0 < int(self.dimse.port) < 65536:
                raise PacsError(f"{where}: DIMSE port {self.dimse.port} is invalid", "give the peer's port")
            if self.dimse.retrieve == "move" and not self.dimse.our_port:
                raise PacsError(f"{where} retrieves with C-MOVE but has no our_port for the images to arrive on",
                                "set dimse.our_port (and register our AE title, host and port on the PACS)")
        return self

    def to_json(self) -> dict:
        data = {key: value for key, value in asdict(self).items() if key != "name"}
        if data["dimse"] is None:
            del data["dimse"]
        return data

    @classmethod
    def from_json(cls, name: str, data: dict) -> PacsEndpoint:
        known = {f.name for f in fields(cls)} - {"name", "dimse"}
        unknown = set(data) - known - {"dimse"}
        if unknown:
            raise PacsError(f"PACS endpoint {name!r} has unknown setting(s) {', '.join(sorted(unknown))}",
                            f"use: {', '.join(sorted(known | {'dimse'}))}")
        dimse = data.get("dimse")
        peer = None
        if dimse:
            peer_fields = {f.name for f in fields(DimsePeer)}
            if set(dimse) - peer_fields:
                unknown_peer = ", ".join(sorted(set(dimse) - peer_fields))
                raise PacsError(f"PACS endpoint {name!r} has unknown DIMSE setting(s) {unknown_peer}",
                                f"use: {', '.join(sorted(peer_fields))}")
            peer = DimsePeer(**dimse)
        return cls(name=name, dimse=peer, **{key: value for key, value in data.items() if key != "dimse"})


# ---------------------------------------------------------------------------------------------
# The settings file and the environment


def config_path() -> Path:
    explicit = os.environ.get("AIPORTAL_PACS_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "aiportal" / "pacs.json"


def _env_prefix(name: str) -> str:
    return "AIPORTAL_PACS_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_"


def _read_file(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PacsError(f"PACS settings file {path} cannot be read: {error}", "fix or remove the file") from error
    endpoints = data.get("endpoints", {}) if isinstance(data, dict) else None
    if not isinstance(endpoints, dict):
        raise PacsError(f"PACS settings file {path} has no 'endpoints' object", 'write {"endpoints": {NAME: {...}}}')
    return endpoints


def _with_environment(endpoint: PacsEndpoint) -> PacsEndpoint:
    prefix = _env_prefix(endpoint.name)
    changes = {}
    for suffix, key in (("URL", "dicomweb_url"), ("USERNAME", "username"), ("CA_BUNDLE", "ca_bundle")):
        if os.environ.get(prefix + suffix):
            changes[key] = os.environ[prefix + suffix]
    if os.environ.get(prefix + "PASSWORD"):
        changes.update(password=os.environ[prefix + "PASSWORD"], password_env="")
        changes.setdefault("auth", "basic")
    if os.environ.get(prefix + "TOKEN"):
        changes.update(token=os.environ[prefix + "TOKEN"], token_env="", auth="bearer")
    return replace(endpoint, **changes) if changes else endpoint


def _environment_only_names() -> list[str]:
    pattern = re.compile(r"AIPORTAL_PACS_(.+)_URL$")
    return [match.group(1).lower() for key in os.environ if (match := pattern.match(key))]


def list_endpoints(path: Path | None = None) -> list[PacsEndpoint]:
    """Every configured endpoint (file and environment), secrets resolved from the environment."""
    path = path or config_path()
    endpoints = {name: _with_environment(PacsEndpoint.from_json(name, data)) for name, data in _read_file(path).items()}
    for name in _environment_only_names():
        if name not in endpoints:
            endpoints[name] = _with_environment(PacsEndpoint(name=name))
    return [endpoints[name] for name in sorted(endpoints)]


def get_endpoint(name: str, path: Path | None = None) -> PacsEndpoint:
    endpoints = {endpoint.name: endpoint for endpoint in list_endpoints(path)}
    if name not in endpoints:
        known = ", ".join(endpoints) or "none configured"
        raise PacsError(f"No PACS endpoint named {name!r} (known: {known})",
                        f"add it with `aiportal pacs add {name} ...`, in {path or config_path()}, "
                        f"or set {_env_prefix(name)}URL")
    return endpoints[name].validate()


def add_endpoint(endpoint: PacsEndpoint, path: Path | None = None, *, replace_existing: bool = True) -> Path:
    """Save (or replace) an endpoint in the settings file; the file is private (0600)."""
    endpoint.validate()
    path = path or config_path()
    endpoints = _read_file(path)
    if endpoint.name in endpoints and not replace_existing:
        raise PacsError(f"PACS endpoint {endpoint.name!r} already exists in {path}", "remove it first or replace it")
    endpoints[endpoint.name] = endpoint.to_json()
    _write_file(path, endpoints)
    return path


def remove_endpoint(name: str, path: Path | None = None) -> None:
    path = path or config_path()
    endpoints = _read_file(path)
    if name not in endpoints:
        raise PacsError(f"No PACS endpoint named {name!r} in {path}", "check the name")
    del endpoints[name]
    _write_file(path, endpoints)


def _write_file(path: Path, endpoints: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
    with os.fdopen(descriptor, "w") as stream:
        json.dump({"endpoints": endpoints}, stream, indent=2, sort_keys=True)
    temporary.replace(path)


@dataclass(frozen=True)
class EndpointCheck:
    """The result of testing an endpoint: one line per protocol, ok or why not."""

    name: str
    dicomweb: str | None  # None: not configured
    dimse: str | None
    ok: bool


def check_endpoint(endpoint: PacsEndpoint | str, path: Path | None = None) -> EndpointCheck:
    """Try each configured protocol once (QIDO-RS for one study; C-ECHO) and say what happened."""
    if isinstance(endpoint, str):
        endpoint = get_endpoint(endpoint, path)
    endpoint.validate()
    ok = True
    web = peer = None
    if endpoint.has_dicomweb:
        from aiportal.pacs.dicomweb import DicomWebClient

        try:
            DicomWebClient(endpoint).ping()
            web = f"DICOMweb OK ({endpoint.dicomweb_url})"
        except PacsError as error:
            web, ok = str(error), False
    if endpoint.has_dimse:
        from aiportal.pacs.dimse import DimseClient

        try:
            DimseClient(endpoint).echo()
            peer = f"C-ECHO OK ({endpoint.dimse.ae_title}@{endpoint.dimse.host}:{endpoint.dimse.port})"
        except PacsError as error:
            peer, ok = str(error), False
    return EndpointCheck(endpoint.name, web, peer, ok)
