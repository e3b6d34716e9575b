"""Versioned SQL migrations for the host and for plugins, applied by ``poel-host migrate``.

A run holds an advisory lock of the session, so any number of processes can run
``migrate`` at once: the first applies, the others wait and find nothing to do. Pending
migrations run in transactions, except those that say they must not
(``Migration.transaction``, the line ``-- poel: no-transaction``), and every statement
waits for a lock no longer than ``lock_timeout_ms`` (see :mod:`poel_host.migrating`). Each
applied migration is recorded in ``<schema>.migrations`` under its owner (``poel-host``
or the plugin's name).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from importlib import resources
from typing import Any

import psycopg

from poel_host.errors import DatabaseUnavailable, SchemaOutOfDate, one_line
from poel_host.migrating import HOST, Run, autocommit, session_lock
from poel_host.sqlfiles import Migration
from poel_host.store import MigrationStore

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_MS",
    "HOST",
    "Migration",
    "check_up_to_date",
    "host_migrations",
    "migrate",
    "pending",
]

# How long a migration's statement may wait for a lock (POEL_MIGRATION_LOCK_TIMEOUT_MS).
DEFAULT_LOCK_TIMEOUT_MS = 5_000
_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[\w-]+)\.sql$")


def host_migrations() -> list[Migration]:
    folder = resources.files("poel_host").joinpath("sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
            )
    return sorted(found, key=lambda m: m.version)


def lock_key(schema: str) -> int:
    """The advisory lock that serialises migrations of one schema."""
    return zlib.crc32(f"poel-migrate:{schema}".encode())


def pending(
    conn: psycopg.Connection[Any],
    schema: str,
    plugin_migrations: Iterable[tuple[str, Migration]] = (),
) -> list[tuple[str, Migration]]:
    """The migrations not yet applied, host first, each owner's in version order."""
    done = MigrationStore(schema).applied_migrations(conn)
    todo = [(HOST, m) for m in host_migrations()]
    todo += sorted(plugin_migrations, key=lambda pm: (pm[0], pm[1].version))
    return [(owner, m) for owner, m in todo if (owner, m.version) not in done]


def migrate(
    conn: psycopg.Connection[Any],
    schema: str,
    plugin_migrations: Iterable[tuple[str, Migration]] = (),
    *,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> list[str]:
    """Apply what is pending; returns ``owner:version_name`` for each migration applied.

    Every statement may wait ``lock_timeout_ms`` for a lock (0: for ever), except the
    ``CONCURRENTLY`` ones of a migration outside a transaction, which wait as long as they
    need and have no statement_timeout: their locks stop no claim.
    """
    store = MigrationStore(schema)
    plugin_migrations = list(plugin_migrations)
    try:
        with autocommit(conn), session_lock(conn, store, lock_key(schema)):
            saved = store.migration_timeouts(conn)
            run = Run(conn, store, lock_timeout_ms)
            try:
                run.migrate(lambda c: pending(c, schema, plugin_migrations))
            finally:
                if not conn.broken:
                    store.set_migration_timeouts(conn, **saved)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"migration interrupted: {exc}") from None
    except psycopg.OperationalError as exc:  # a transaction's own COMMIT or ROLLBACK
        raise DatabaseUnavailable(f"migration interrupted: {one_line(exc)}") from None
    return run.applied


def check_up_to_date(
    conn: psycopg.Connection[Any],
    schema: str,
    plugin_migrations: Iterable[tuple[str, Migration]] = (),
) -> None:
    """Raise SchemaOutOfDate naming what is missing."""
    missing = pending(conn, schema, plugin_migrations)
    if missing:
        names = ", ".join(f"{o}:{m.version:04d}_{m.name}" for o, m in missing)
        raise SchemaOutOfDate(
            f"the database schema {schema!r} is not up to date (pending: {names}); "
            "run `poel-host migrate` (or set POEL_AUTO_MIGRATE=true)"
        )
