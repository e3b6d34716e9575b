"""The plugin's SQL: named blocks from ``sql/queries.sql`` and versioned migrations.

The blocks use the host's format (``-- name --``) and its parser, so the SQL is read,
reviewed and EXPLAINed as SQL. psycopg is imported when a query is composed, not when the
plugin loads, so that loading it (a producer validating payloads) stays cheap.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

from poel_host import Migration
from poel_host.queries import parse_blocks

if TYPE_CHECKING:
    from psycopg import sql


def read_sql(*parts: str) -> str:
    """The text of a file under ``poel_auth_cleanup/sql/`` (shipped in the wheel)."""
    entry = resources.files("poel_auth_cleanup").joinpath("sql")
    for part in parts:
        entry = entry.joinpath(part)
    return entry.read_text(encoding="utf-8")


@functools.cache
def _blocks() -> dict[str, str]:
    return parse_blocks(read_sql("queries.sql"))


def query(name: str, table: tuple[str, ...] = (), expiry: str = "") -> sql.Composed:
    """The block ``name`` with ``{table}`` and ``{expiry}`` filled in as quoted identifiers."""
    from psycopg import sql

    names = {}
    if table:
        names["table"] = sql.Identifier(*table)
    if expiry:
        names["expiry"] = sql.Identifier(expiry)
    return sql.SQL(_blocks()[name]).format(**names)


def migrations() -> list[Migration]:
    """The plugin's migrations, applied by ``poel-host migrate`` under ``poel-auth-cleanup``."""
    return [
        Migration(1, "auth_tokens_table", read_sql("migrations", "0001_auth_tokens_table.sql")),
    ]
