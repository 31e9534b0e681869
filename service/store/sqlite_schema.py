"""The SQLite schema: its migrations, and the connection the store opens on them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from service.errors import StorageUnavailable

MIGRATIONS = (
    "sqlite_001_initial.sql",
    "sqlite_002_watches.sql",
    "sqlite_003_ops_sessions.sql",
    "sqlite_004_attribution.sql",
    "sqlite_005_flood.sql",
    "sqlite_006_budget.sql",
    "sqlite_007_suspect.sql",
    "sqlite_008_archive.sql",
    "sqlite_009_idempotency.sql",
    "sqlite_010_keys.sql",
    "sqlite_011_metadata.sql",
    "sqlite_012_subscriber_limits.sql",
)
#: How long opening the store (migrations, at start) waits for another process's lock.
BUSY_TIMEOUT_MS = 2000


def connect(
    path: str,
    synchronous: str,
    *,
    migrate: bool,
    progress: Callable[[int, int, str], None] | None = None,
) -> sqlite3.Connection:
    """The store's connection to ``path``, in WAL mode, its schema migrated (``migrate``) or
    checked, and a busy timeout of 0 from then on: its statements run on the event loop,
    which must never wait there (``sqlite_commit``)."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=OFF")
    if migrate:
        apply_migrations(conn, progress)
    else:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < len(MIGRATIONS):
            conn.close()
            raise StorageUnavailable(
                f"The database is at schema version {version} of {len(MIGRATIONS)};"
                " run `relay migrate` first."
            )
    conn.execute("PRAGMA busy_timeout=0")
    return conn


def apply_migrations(
    conn: sqlite3.Connection, progress: Callable[[int, int, str], None] | None = None
) -> None:
    """Apply the migrations the database lacks (``PRAGMA user_version``), in one transaction;
    ``progress(version, total, name)`` is called before each."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, name in enumerate(MIGRATIONS, start=1):
            if number > version:
                if progress is not None:
                    progress(number, len(MIGRATIONS), name)
                sql = resources.files("service.store.sql").joinpath(name).read_text()
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
