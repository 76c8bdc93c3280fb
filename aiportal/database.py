"""One way to open a SQL database (SQLAlchemy) for the server's job store and the audit's anchors.

SQLite gets WAL and a busy time-out so that several processes (the API server, its workers, the
CLI) can share one file; any other URL (``postgresql+psycopg://...``) is opened as is.
"""

from __future__ import annotations

from pathlib import Path

from aiportal.errors import AIPortalError


def make_engine(url: str):
    """A SQLAlchemy engine for ``url``."""
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise AIPortalError(f"the database driver for {url.split(':', 1)[0]} is not installed ({error.name})",
                            "install it, e.g. `pip install psycopg[binary]` for PostgreSQL") from error
