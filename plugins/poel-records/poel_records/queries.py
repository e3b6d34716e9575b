"""The plugin's SQL: named blocks in ``sql/queries.sql`` and versioned migrations in
``sql/migrations/``, read through the host's :class:`poel_host.PackageSql` so the SQL is
read, reviewed and EXPLAINed as SQL and the table name is always a quoted identifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

from poel_host import Migration, PackageSql

if TYPE_CHECKING:
    from psycopg import sql

SQL = PackageSql("poel_records")


def query(name: str, table: tuple[str, ...]) -> sql.Composed:
    """The block ``name`` with ``{table}`` filled in as a quoted (qualified) identifier."""
    return SQL.query(name, table=table)


def migrations() -> list[Migration]:
    """The plugin's migrations, applied by ``poel-host migrate`` under ``poel-records``."""
    return [SQL.migration(1, "records_table")]
