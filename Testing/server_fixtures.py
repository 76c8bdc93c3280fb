"""Real services for the inference-server tests and benchmark, all on loopback.

- :class:`ApiServer`: ``python -m aiportal.server serve`` (real uvicorn) in a subprocess;
- :class:`RedisServer`: Debian's ``redis-server`` on a free port, no persistence;
- :class:`CeleryWorker`: ``celery -A aiportal.server.celery_app worker`` in its own process group;
- :class:`JwksIssuer`: an RSA key, its JWKS served over HTTP, and tokens signed with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from processes import free_port, log_tail, stop_process_group  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class ApiServer:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def key(self, name: str, scopes: str, expires_days: float | None = None) -> str:
        command = [sys.executable, "-m", "aiportal.server", "server-key", "--data-dir", str(self.data_dir),
                   "create", name, "--scopes", scopes]
        if expires_days is not None:
            command += ["--expires-days", str(expires_days)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.env}, cwd=REPO,
                              check=True)
        return done.stdout.strip()

    def start(self, timeout_s: float = 60.0) -> ApiServer:
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - kept open for the process' life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiportal.server", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env}, cwd=REPO, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/v1/health", timeout=2).status_code in (200, 401):  # up (needs a key)
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API server did not answer within {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        stop_process_group(self.process)

    def kill(self) -> None:
        stop_process_group(self.process, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.data_dir / "server.log", lines)


@dataclass
class RedisServer:
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        stop_process_group(self.process)


@dataclass
class CeleryWorker:
    env: dict[str, str]
    queues: list[str]
    log_path: Path
    name: str = "w1"
    pool: str = "solo"
    process: subprocess.Popen | None = None
    app_module: str = "aiportal.server.celery_app"

    def start(self, timeout_s: float = 60.0) -> CeleryWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process' life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app_module, "worker", "--loglevel", "INFO",
             "-Q", ",".join(self.queues), "--concurrency", "1", "--pool", self.pool, "-n", f"{self.name}@%h",
             "--without-gossip", "--without-mingle"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, cwd=REPO, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # "ready." once it consumes from the broker
            if self.process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited: {self.log_tail()}")
            if "ready." in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the Celery worker did not start: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as in a crash."""
        stop_process_group(self.process, signal.SIGKILL)

    def stop(self) -> None:
        stop_process_group(self.process, signal.SIGTERM, timeout=20)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


class JwksIssuer:
    """A local identity provider: an RSA signing key and its JWKS at ``jwks_url``."""

    def __init__(self, issuer: str = "https://idp.test/realms/aiportal", audience: str = "aiportal") -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.issuer, self.audience, self.kid = issuer, audience, "test-key-1"
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not in the JWKS
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        body = json.dumps({"keys": [dict(jwk, kid=self.kid, use="sig", alg="RS256")]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.http.server_address[1]}/jwks.json"

    def token(self, subject: str = "reader-1", roles: tuple[str, ...] = ("aiportal-user",), *,
              expires_in_s: float = 300, issuer: str | None = None, audience: str | None = None,
              wrong_key: bool = False) -> str:
        import jwt

        now = int(time.time())
        claims = {"sub": subject, "iss": issuer or self.issuer, "aud": audience or self.audience, "iat": now,
                  "exp": now + int(expires_in_s), "realm_access": {"roles": list(roles)}}
        key = self.other_key if wrong_key else self.private_key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.http.shutdown()
