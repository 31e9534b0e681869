"""Stores, chosen by the scheme of ``RELAY_DATABASE_URL``."""

from __future__ import annotations

from service.clock import Clock, system_clock
from service.settings import ConfigError
from service.store.base import Store


def open_store(url: str, *, migrate: bool = True, clock: Clock = system_clock) -> Store:
    """A not-yet-opened store for ``url`` (``sqlite:///path`` or ``postgresql://...``).

    With ``migrate`` (the default) opening applies pending schema migrations; without, opening
    fails if any are pending. ``clock``: the time the store judges secrets and ages at.
    """
    if url.startswith("sqlite:///"):
        from service.store.sqlite import SQLiteStore, sqlite_path

        return SQLiteStore(sqlite_path(url), migrate=migrate, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is needed only by deployments that use PostgreSQL.
        from service.store.postgres import PostgresStore

        return PostgresStore(url, migrate=migrate, clock=clock)
    raise ConfigError(
        f"RELAY_DATABASE_URL: unsupported scheme in {url.split(':', 1)[0]!r};"
        " use sqlite:///path or postgresql://user@host:port/database"
    )
