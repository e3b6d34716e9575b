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
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from poel_host.errors import DatabaseUnavailable, PoelError, SchemaOutOfDate, one_line
from poel_host.queries import read_sql, with_schema

HOST = "poel-host"
_FILE = re.compile(r"^(?P<version>\d+)_(?P<name>[\w-]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One versioned SQL script. Versions are positive and increase per owner.

    Host migrations may use ``{schema}`` for the configured schema; a plugin's SQL is run
    as written.
    """

    version: int
    name: str
    sql: str


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


def _applied(conn: psycopg.Connection[Any], schema: str) -> set[tuple[str, int]]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS ok", [f"{schema}.migrations"])
    row = exists.fetchone()
    if not row or not (row["ok"] if isinstance(row, dict) else row[0]):
        return set()
    query = sql.SQL("SELECT plugin, version FROM {}.migrations").format(sql.Identifier(schema))
    return {(r["plugin"], r["version"]) for r in conn.execute(query)}


def pending(
    conn: psycopg.Connection[Any],
    schema: str,
    plugin_migrations: Iterable[tuple[str, Migration]] = (),
) -> list[tuple[str, Migration]]:
    """The migrations not yet applied, host first, each owner's in version order."""
    done = _applied(conn, schema)
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
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(schema)])
            conn.execute(with_schema(read_sql("schema.sql"), schema))
            for owner, migration in pending(conn, schema, plugin_migrations):
                text = migration.sql
                statement = with_schema(text, schema) if owner == HOST else sql.SQL(text)
                try:
                    conn.execute(statement)
                except psycopg.Error as exc:
                    raise PoelError(
                        f"migration {owner} {migration.version:04d}_{migration.name} failed: "
                        f"{one_line(exc)}"
                    ) from None
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.migrations (plugin, version, name) VALUES (%s, %s, %s)"
                    ).format(sql.Identifier(schema)),
                    [owner, migration.version, migration.name],
                )
                applied.append(f"{owner}:{migration.version:04d}_{migration.name}")
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"migration interrupted: {exc}") from None
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
