"""Stores, chosen by the scheme of ``RELAY_DATABASE_URL``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.clock import Clock, system_clock
from service.settings import ConfigError
from service.store.base import Store

if TYPE_CHECKING:
    from service.store.postgres import PostgresStore

#: How to install the PostgreSQL driver: ``psycopg`` is an extra of the package.
POSTGRES_EXTRA = "pip install 'callback-relay[postgres]'"
#: The modules that extra brings (``psycopg-binary`` is found by ``psycopg`` itself).
_POSTGRES_MODULES = ("psycopg", "psycopg_pool", "psycopg_binary")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def postgres_store_class() -> type[PostgresStore]:
    """The PostgreSQL store, imported on first use: psycopg is needed only with PostgreSQL.

    Raises:
        ConfigError: psycopg (the ``postgres`` extra) is not installed, in one line naming
            the command that installs it.
    """
    try:
        from service.store.postgres import PostgresStore
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] in _POSTGRES_MODULES
        # psycopg without its binary package and without a system libpq says this instead.
        if not missing and not str(exc).startswith("no pq wrapper available"):
            raise
        raise ConfigError(
            "RELAY_DATABASE_URL is a PostgreSQL URL but the PostgreSQL driver (psycopg) is not"
            f" installed: {POSTGRES_EXTRA}"
        ) from None
    return PostgresStore


def open_store(url: str, *, migrate: bool = True, clock: Clock = system_clock) -> Store:
    """A not-yet-opened store for ``url`` (``sqlite:///path`` or ``postgresql://...``).

    With ``migrate`` (the default) opening applies pending schema migrations; without, opening
    fails if any are pending. ``clock``: the time the store judges secrets and ages at.
    """
    if url.startswith("sqlite:///"):
        from service.store.sqlite import SQLiteStore, sqlite_path

        return SQLiteStore(sqlite_path(url), migrate=migrate, clock=clock)
    if is_postgres(url):
        return postgres_store_class()(url, migrate=migrate, clock=clock)
    raise ConfigError(
        f"RELAY_DATABASE_URL: unsupported scheme in {url.split(':', 1)[0]!r};"
        " use sqlite:///path or postgresql://user@host:port/database"
    )
