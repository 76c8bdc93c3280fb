"""Who may call the server: API keys with scopes and expiry, and OIDC/JWT bearer tokens.

Both arrive as ``Authorization: Bearer <credential>`` (``X-API-Key`` also works for keys; a
browser's ``Authorization: Basic`` carries the credential as its password, :mod:`.browser_auth`).
API keys look like ``aip_<key id>_<secret>``; only the SHA-256 of the secret is stored (the
secret is 32 random bytes, so a plain hash is as strong as a slow one), compared in constant
time. JWTs are checked against the configured issuer's JWKS (signature, ``exp``, ``iss``,
``aud``), and the identity provider's roles are mapped to scopes.

Scopes: ``status`` (health, catalog, own jobs' state), ``read`` (also their results), ``submit``
(create, cancel, push), ``review`` (see every owner's jobs and results), ``audit`` (query the audit
trail), ``metrics`` (``/metrics``), ``dashboard`` (``/dashboard``), ``admin`` (every owner's jobs).
Roles bundle them: :mod:`aiportal.server.roles`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from aiportal.server.jobs import metadata
from aiportal.server.roles import expand
from aiportal.server.settings import ServerSettings

# roles (named bundles of these): aiportal.server.roles
SCOPES = ("status", "read", "submit", "review", "audit", "metrics", "dashboard", "admin")
KEY_PREFIX = "aip_"

keys_table = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(200), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float),  # None: never
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)


class AuthError(Exception):
    """401 (no or invalid credential) or 403 (valid but not allowed); the message names no secret."""

    def __init__(self, status: int, message: str, fix: str) -> None:
        super().__init__(message)
        self.status, self.message, self.fix = status, message, fix


@dataclass(frozen=True)
class Principal:
    subject: str  # "key:<id>" or "oidc:<sub>": the owner of the jobs it submits; never a person's name
    scopes: frozenset[str]
    kind: str  # "api-key" or "jwt"

    def require(self, scope: str) -> None:
        if scope not in expand(self.scopes):
            raise AuthError(403, f"this credential lacks the {scope!r} scope",
                            f"use an API key or role granting {scope!r}")


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    scopes: tuple[str, ...]
    created: float
    expires: float | None
    revoked: bool


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        from aiportal.errors import AIPortalError

        raise AIPortalError(f"unknown or missing scope(s): {', '.join(unknown) or '(none)'}",
                            f"use some of: {', '.join(SCOPES)}")
    return tuple(dict.fromkeys(scopes))


class ApiKeyStore:
    """API keys in the server database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def create(self, name: str, scopes: list[str] | tuple[str, ...], expires_in_s: float | None = None) -> str:
        """A new key; the full key is returned once and never stored."""
        scopes = check_scopes(scopes)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(keys_table.insert().values(
                id=key_id, name=name, secret_sha256=_digest(secret), scopes=" ".join(scopes), created=now,
                expires=now + expires_in_s if expires_in_s is not None else None, revoked=False))
        return f"{KEY_PREFIX}{key_id}_{secret}"

    def list(self) -> list[ApiKeyInfo]:
        with self.engine.connect() as connection:
            rows = connection.execute(keys_table.select().order_by(keys_table.c.created)).fetchall()
        return [ApiKeyInfo(row.id, row.name, tuple(row.scopes.split()), row.created, row.expires, row.revoked)
                for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(keys_table.update().where(keys_table.c.id == key_id)
                                      .values(revoked=True)).rowcount == 1

    def authenticate(self, key: str) -> Principal:
        key_id, _, secret = key[len(KEY_PREFIX):].partition("_")
        with self.engine.connect() as connection:
            row = connection.execute(keys_table.select().where(keys_table.c.id == key_id)).first()
        # compare even when the id is unknown, so that timing does not tell which ids exist
        stored = row.secret_sha256 if row else "0" * 64
        if not hmac.compare_digest(stored, _digest(secret)) or row is None:
            raise AuthError(401, "invalid API key", "check the key, or ask the server administrator for one")
        if row.revoked:
            raise AuthError(401, f"API key {key_id} was revoked", "ask the server administrator for a new key")
        if row.expires is not None and row.expires < time.time():
            raise AuthError(401, f"API key {key_id} has expired", "ask the server administrator for a new key")
        return Principal(f"key:{key_id}", frozenset(row.scopes.split()), "api-key")


class JwtVerifier:
    """Bearer JWTs from the configured OIDC issuer, verified with its JWKS (keys cached)."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]

    def __init__(self, settings: ServerSettings) -> None:
        import jwt

        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.oidc_jwks_url, cache_keys=True, lifespan=300, timeout=10)

    def authenticate(self, token: str) -> Principal:
        import jwt

        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, signing_key.key, algorithms=self.ALGORITHMS, issuer=self.settings.oidc_issuer,
                                audience=self.settings.oidc_audience or None,
                                options={"require": ["exp", "iss", "sub"],
                                         "verify_aud": bool(self.settings.oidc_audience)})
        except jwt.ExpiredSignatureError as error:
            raise AuthError(401, "bearer token has expired", "get a new token from the identity provider") from error
        except jwt.PyJWKClientConnectionError as error:
            raise AuthError(401, "the identity provider's keys (JWKS) cannot be fetched",
                            "retry later; tell the server administrator if it persists") from error
        except jwt.PyJWTError as error:
            raise AuthError(401, f"invalid bearer token ({type(error).__name__})",
                            "get a valid token from the configured identity provider") from error
        roles = _claim(claims, self.settings.oidc_role_claim)
        if isinstance(roles, str):
            roles = roles.split()
        scopes = {scope for role in roles or [] for scope in self.settings.oidc_role_scopes.get(str(role), [])}
        return Principal(f"oidc:{claims['sub']}", frozenset(scopes), "jwt")


def _claim(claims: dict, dotted: str):
    value = claims
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class Authenticator:
    """Turns request headers into a :class:`Principal`, or raises :class:`AuthError` (401)."""

    def __init__(self, keys: ApiKeyStore, settings: ServerSettings) -> None:
        self.keys = keys
        self.jwt = JwtVerifier(settings) if settings.oidc_enabled else None

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        credential = api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "basic":  # a browser's sign-in box: the key is the password
                from aiportal.server.browser_auth import basic_password

                value = basic_password(value)
            elif scheme.lower() != "bearer" or not value.strip():
                raise AuthError(401, "unsupported Authorization header", "send 'Authorization: Bearer <key or token>'")
            credential = value.strip()
        if not credential:
            raise AuthError(401, "authentication required",
                            "send 'Authorization: Bearer <API key or OIDC token>' or 'X-API-Key: <key>'")
        if credential.startswith(KEY_PREFIX):
            return self.keys.authenticate(credential)
        if self.jwt is None:
            raise AuthError(401, "invalid API key (and bearer tokens are not enabled on this server)",
                            "use an API key of this server")
        return self.jwt.authenticate(credential)


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        if self.per_minute <= 0:
            return 0.0
        now, rate = time.monotonic(), self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / rate
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
