"""The PostgreSQL schema: migrations, applied by whichever replica starts first."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import structlog
from psycopg import AsyncConnection

from service.errors import StorageUnavailable

log = structlog.get_logger("service.store")

#: Applied in order; a file's position (from 1) is its version in ``schema_migrations``.
MIGRATIONS = (
    "postgres_001_initial.sql",
    "postgres_002_watches.sql",
    "postgres_003_ingest.sql",
    "postgres_004_ops_sessions.sql",
    "postgres_005_store.sql",
    "postgres_006_attribution.sql",
    "postgres_007_flood.sql",
    "postgres_008_budget.sql",
    "postgres_009_suspect.sql",
    "postgres_010_archive.sql",
    "postgres_011_idempotency.sql",
    "postgres_012_keys.sql",
    "postgres_013_metadata.sql",
    "postgres_014_subscriber_limits.sql",
)

#: Advisory lock (one-key form, a lock space apart from the two-key locks of the other modules)
#: held while migrating.
LOCK_MIGRATIONS = 0x52454C4159  # "RELAY"


async def migrate(
    conn: AsyncConnection[Any], progress: Callable[[int, int, str], None] | None = None
) -> None:
    """Apply the migrations this database lacks, under a lock: replicas may start together.

    Migrations only ever add. A database already migrated further (a newer replica started
    first) is left as it is.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (LOCK_MIGRATIONS,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in await cursor.fetchall()}
        for version, name in enumerate(MIGRATIONS, start=1):
            if version in applied:
                continue
            if progress is not None:
                progress(version, len(MIGRATIONS), name)
            script = resources.files("service.store.sql").joinpath(name).read_text()
            await conn.execute(script)  # no parameters: psycopg sends it as one simple query
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            log.info("store_migrated", version=version, migration=name)


async def require_migrated(conn: AsyncConnection[Any]) -> None:
    """Refuse to run on a schema that lacks migrations (``relay serve --no-migrate``)."""
    cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cursor.fetchone()
    applied: set[int] = set()
    if row and row[0]:
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {r[0] for r in await cursor.fetchall()}
    missing = [v for v in range(1, len(MIGRATIONS) + 1) if v not in applied]
    if missing:
        raise StorageUnavailable(
            f"The database lacks migrations {missing}; run `relay migrate` first."
        )
