"""The plugin's SQL: named blocks in ``sql/queries.sql`` and versioned migrations in
``sql/migrations/``, read through the host's :class:`poel_host.PackageSql` so the SQL is
read, reviewed and EXPLAINed as SQL and configured names are always quoted identifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from poel_host import Migration, PackageSql

if TYPE_CHECKING:
    from psycopg import sql

SQL = PackageSql("poel_auth_cleanup")


def query(name: str, table: tuple[str, ...] = (), expiry: str = "") -> sql.Composed:
    """The block ``name`` with ``{table}`` and ``{expiry}`` filled in as quoted identifiers."""
    names: dict[str, str | tuple[str, ...]] = {}
    if table:
        names["table"] = table
    if expiry:
        names["expiry"] = expiry
    return SQL.query(name, **names)


def migrations() -> list[Migration]:
    """The plugin's migrations, applied by ``poel-host migrate`` under ``poel-auth-cleanup``."""
    return [SQL.migration(1, "auth_tokens_table")]
