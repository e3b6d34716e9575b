"""Versioned SQL migrations for the host and for plugins, applied by ``poel-host migrate``.

Migrations run in one transaction under an advisory lock, so any number of processes can
run ``migrate`` at once: the first applies, the others wait and find nothing to do. Each
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
from psycopg import sql

from poel_host.errors import DatabaseUnavailable, PoelError, SchemaOutOfDate, one_line
from poel_host.sqlfiles import Migration, read_sql, with_schema
from poel_host.store import MigrationStore

__all__ = ["HOST", "Migration", "check_up_to_date", "host_migrations", "migrate", "pending"]

HOST = "poel-host"
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
) -> list[str]:
    """Apply what is pending; returns ``owner:version_name`` for each migration applied."""
    applied = []
    store = MigrationStore(schema)
    try:
        with conn.transaction():
            store.lock_migrations(conn, lock_key(schema))
            store.run_script(conn, with_schema(read_sql("schema.sql"), schema))
            for owner, migration in pending(conn, schema, plugin_migrations):
                text = migration.sql
                statement = with_schema(text, schema) if owner == HOST else sql.SQL(text)
                try:
                    store.run_script(conn, statement)
                except (DatabaseUnavailable, psycopg.Error) as exc:
                    if isinstance(exc, DatabaseUnavailable) and conn.broken:
                        raise  # the connection was lost, not the migration wrong
                    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
                    raise PoelError(
                        f"migration {owner} {migration.version:04d}_{migration.name} failed: "
                        f"{one_line(cause or exc)}"
                    ) from None
                store.record_migration(conn, owner, migration.version, migration.name)
                applied.append(f"{owner}:{migration.version:04d}_{migration.name}")
            # Every time, so a database migrated before this step closes too.
            store.close_schema(conn)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"migration interrupted: {exc}") from None
    except psycopg.OperationalError as exc:  # the transaction's own COMMIT or ROLLBACK
        raise DatabaseUnavailable(f"migration interrupted: {one_line(exc)}") from None
    return applied


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
