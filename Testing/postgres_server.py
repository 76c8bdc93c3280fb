"""A real PostgreSQL for the tests: Debian's server binaries, a scratch cluster on a free loopback port.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` system user (``runuser``). Trust authentication on loopback only; removed on stop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from processes import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((str(folder / name) for folder in versions if (folder / name).is_file()), None)


def missing_requirements() -> str | None:
    if not (_binary("initdb") and _binary("pg_ctl")):
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (pip install 'psycopg[binary]')"
    return None


class PostgresServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aiportal-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://aiportal@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        subprocess.run([*self.as_user, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", "aiportal",
                        "--no-sync"], check=True, capture_output=True, timeout=timeout_s)
        subprocess.run([*self.as_user, _binary("pg_ctl"), "-D", str(data), "-l", str(self.folder / "log"), "-w",
                        "-t", str(int(timeout_s)), "-o",
                        f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start"], check=True, capture_output=True, timeout=timeout_s + 10)
        deadline = time.monotonic() + timeout_s
        import sqlalchemy as sa

        while True:
            try:
                with sa.create_engine(self.url).connect() as connection:
                    connection.execute(sa.text("select 1"))
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run([*self.as_user, _binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
