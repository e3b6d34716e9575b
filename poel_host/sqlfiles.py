"""SQL shipped as files: named blocks, migrations, and the schema filled in safely.

Keeping SQL in ``.sql`` files means it is read, reviewed and EXPLAINed as SQL. The schema
name comes from configuration, so it is inserted as a quoted identifier
(``psycopg.sql.Identifier``), never formatted in as text; values are always parameters.
The host's own queries are run by :mod:`poel_host.store`; :class:`PackageSql` gives a
plugin the same for the SQL it ships.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

_BLOCK = re.compile(r"^-- (?P<name>[a-z_]+) --$", re.MULTILINE)
# The line by which a migration's SQL says it must run outside a transaction.
NO_TRANSACTION = "-- poel: no-transaction"
_NO_TRANSACTION = re.compile(rf"^[ \t]*{re.escape(NO_TRANSACTION)}[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One versioned SQL script. Versions are positive and increase per owner.

    Host migrations may use ``{schema}`` for the configured schema; a plugin's SQL is run
    as written.

    ``transaction=False`` (or a line ``-- poel: no-transaction`` in the SQL, which sets it)
    runs the statements one by one outside a transaction, as ``CREATE INDEX CONCURRENTLY``
    needs, and records the migration once they all succeeded. A failure part way leaves
    the statements before it applied and the migration pending, so such a migration must
    be safe to run again from its start: ``DROP INDEX CONCURRENTLY IF EXISTS x;`` before
    ``CREATE INDEX CONCURRENTLY x ...`` (a failed build leaves an INVALID index that
    ``IF NOT EXISTS`` would keep), ``ADD COLUMN IF NOT EXISTS``.
    """

    version: int
    name: str
    sql: str
    transaction: bool = True

    def __post_init__(self) -> None:
        if self.transaction and _NO_TRANSACTION.search(self.sql):
            object.__setattr__(self, "transaction", False)


def read_sql(name: str) -> str:
    """The text of a file under ``poel_host/sql/``."""
    return resources.files("poel_host").joinpath("sql").joinpath(name).read_text(encoding="utf-8")


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file of ``-- name --`` blocks into {name: sql}, without the comment lines
    that open each block: they are for the file's reader, and sent with every statement
    they would cost bytes on the wire and, past psycopg's 4,096 bytes, its cache of
    converted queries (a claim over that length was converted again at every claim)."""
    parts = _BLOCK.split(text)
    blocks = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        while lines and lines[0].lstrip().startswith("--"):
            lines.pop(0)
        blocks[name] = "\n".join(lines).strip()
    return blocks


def with_schema(text: str, schema: str) -> sql.Composed:
    """Fill ``{schema}`` in a SQL text with the quoted schema identifier."""
    return sql.SQL(text).format(schema=sql.Identifier(schema))


class PackageSql:
    """SQL shipped inside a package: named blocks and migration files, for plugins.

    ``PackageSql("poel_records")`` reads ``poel_records/sql/queries.sql`` (blocks in the same
    ``-- name --`` format as the host's) and ``poel_records/sql/migrations/*.sql``.
    Placeholders such as ``{table}`` are filled with quoted identifiers, never as text.
    """

    def __init__(self, package: str, folder: str = "sql") -> None:
        self.package = package
        self.folder = folder

    def read(self, *parts: str) -> str:
        entry = resources.files(self.package).joinpath(self.folder)
        for part in parts:
            entry = entry.joinpath(part)
        return entry.read_text(encoding="utf-8")

    @functools.cached_property
    def blocks(self) -> dict[str, str]:
        return parse_blocks(self.read("queries.sql"))

    def query(self, name: str, **identifiers: str | tuple[str, ...]) -> sql.Composed:
        """Block ``name`` with each ``{placeholder}`` filled by a quoted (qualified) identifier."""
        names = {
            key: sql.Identifier(*value) if isinstance(value, tuple) else sql.Identifier(value)
            for key, value in identifiers.items()
        }
        return sql.SQL(self.blocks[name]).format(**names)

    def migration(self, version: int, name: str) -> Migration:
        """``Migration(version, name, <sql/migrations/NNNN_name.sql>)``, outside a
        transaction if the file has the line ``-- poel: no-transaction``."""
        return Migration(version, name, self.read("migrations", f"{version:04d}_{name}.sql"))
