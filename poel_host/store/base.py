"""The store's plumbing: where a store gets its connection and how it runs one named
statement of ``sql/queries.sql``. Every part of the store (:mod:`.jobs`, :mod:`.workers`,
:mod:`.operators`, :mod:`.migrations`) is a :class:`StoreBase` and calls only these
helpers, so the connection handling and the error translation are written once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

from poel_host.dsn import redact_dsn
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.sqlfiles import parse_blocks, read_sql, with_schema

T = TypeVar("T")
Conn = psycopg.Connection[Any]
# What means "the database could not be used": lost or refused connections, a pool that
# gave no connection in time. Anything else (a constraint, a syntax error) is a bug or bad
# input and keeps its own type.
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


class Source(Protocol):
    """Where a store gets its connection: ``run(work)`` calls ``work(conn)``."""

    def run(self, work: Callable[[Conn], T]) -> T: ...


@functools.cache
def _blocks() -> dict[str, str]:
    return parse_blocks(read_sql("queries.sql"))


# Blocks written into a statement for each lane (one branch per job type), not alone.
_TEMPLATES = {"claim_jobs", "ready_jobs"}


@functools.cache
def queries(schema: str) -> dict[str, sql.Composed]:
    """Every block of ``queries.sql`` with ``schema`` filled in, composed once per schema."""
    return {
        name: with_schema(text, schema)
        for name, text in _blocks().items()
        if name not in _TEMPLATES
    }


@functools.cache
def claim_query(schema: str, job_types: int) -> sql.Composed:
    """``claim_jobs`` for a lane of ``job_types`` types: one ``ready_jobs`` branch each,
    so that the server merges the types' index scans in claim order."""
    blocks, name = _blocks(), sql.Identifier(schema)
    branches = [
        sql.SQL(blocks["ready_jobs"]).format(schema=name, type_number=sql.Literal(number))
        for number in range(1, job_types + 1)
    ]
    return sql.SQL(blocks["claim_jobs"]).format(
        schema=name, ready_jobs=sql.SQL(" UNION ALL ").join(branches)
    )


class StoreBase:
    """Poel's tables in one schema, reached through ``source``: the plumbing alone."""

    def __init__(self, schema: str, source: Source | None = None) -> None:
        self.schema = schema
        self.source = source
        self._q = queries(schema)

    # Plumbing ---------------------------------------------------------------------------

    def _run(self, work: Callable[[Conn], T], connection: Conn | None = None) -> T:
        try:
            if connection is not None:
                return work(connection)
            if self.source is None:
                raise AssertionError("this Store has no source: pass connection=")
            return self.source.run(work)
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"database unavailable: {redact_dsn(one_line(exc))}") from exc

    def _all(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> list[dict[str, Any]]:
        query = self._q[name]
        # dict rows whatever the connection's own row factory (a caller's may be tuples)
        return self._run(
            lambda conn: conn.cursor(row_factory=dict_row).execute(query, params).fetchall(),
            connection,
        )

    def _one(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> dict[str, Any] | None:
        rows = self._all(name, params, connection)
        return rows[0] if rows else None

    def _execute(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> None:
        """A statement whose rows (if any) nobody reads."""
        query = self._q[name]
        self._run(lambda conn: conn.execute(query, params), connection)

    def _ids(self, name: str, params: dict[str, Any], connection: Conn | None = None) -> set[int]:
        return {int(row["id"]) for row in self._all(name, params, connection)}

    def ping(self, conn: Conn | None = None) -> None:
        """One round trip: raises DatabaseUnavailable if the database does not answer."""
        self._execute("ping", None, conn)
