"""Connections to PostgreSQL: the only module that opens them.

Driver errors met while connecting are translated into
:class:`~poel_host.errors.DatabaseUnavailable` with the password masked, so the CLI can
print them as one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import redact_dsn

APPLICATION_NAME = "poel-host"


def connect(
    dsn: str, *, autocommit: bool = True, connect_timeout: int = 5, **kwargs: Any
) -> psycopg.Connection[dict[str, Any]]:
    """One connection with dict rows; DatabaseUnavailable if PostgreSQL cannot be reached."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            row_factory=dict_row,
            connect_timeout=connect_timeout,
            application_name=kwargs.pop("application_name", APPLICATION_NAME),
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(describe_connect_error(dsn, exc)) from None


def describe_connect_error(dsn: str, exc: BaseException) -> str:
    reason = redact_dsn(one_line(exc))
    return f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {reason}"


@contextmanager
def connection(dsn: str, **kwargs: Any) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """``with connection(dsn) as conn:`` -- a short-lived connection, closed afterwards."""
    conn = connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def check_alive(conn: psycopg.Connection[Any]) -> None:
    """Raise if the server ended ``conn`` while it sat idle, without a round trip.

    A connection the server ended (terminated, restarted) has its farewell and EOF waiting
    in the socket: reading them raises. libpq's socket is non-blocking, so nothing waits
    here. (The first read takes the server's FATAL message, the second the EOF.) A
    connection with a command in flight is left alone: its input is its reader's (only a
    handler misusing a connection outside its block leaves one so in the pool).
    """
    if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
        return
    conn.pgconn.consume_input()
    conn.pgconn.consume_input()
    if conn.pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("connection closed while idle in the pool")


class Pool(ConnectionPool[psycopg.Connection[dict[str, Any]]]):
    """A pool that never lends a connection the server ended while it sat idle.

    After ``pg_terminate_backend`` or a server restart every idle connection is dead; lent
    out, each would fail its caller's first statement. psycopg_pool's own ``check`` costs a
    round trip per checkout and sleeps a second or more after each dead connection it
    finds; this check reads the socket instead and takes the next connection at once.
    """

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[dict[str, Any]]:
        for _ in range(self.max_size):
            conn = super().getconn(timeout)
            try:
                check_alive(conn)
            except psycopg.Error:
                self.putconn(conn)  # closed: the pool discards it and opens another
                continue
            return conn
        return super().getconn(timeout)


def make_pool(
    dsn: str,
    *,
    name: str,
    min_size: int,
    max_size: int,
    connect_timeout: int = 5,
    autocommit: bool = True,
    options: str | None = None,
    prepare: bool = True,
) -> Pool:
    """A connection pool whose connections return dict rows.

    The pool is opened without waiting, so a worker can start (and report itself
    unhealthy) while the database is still down.
    """
    kwargs: dict[str, Any] = {
        "autocommit": autocommit,
        "row_factory": dict_row,
        "connect_timeout": connect_timeout,
        "application_name": f"{APPLICATION_NAME}:{name}",
    }
    if options:
        kwargs["options"] = options
    if not prepare:
        # A transaction pooler (PgBouncer, Supabase's) hands each transaction to any
        # server connection: server-side prepared statements would not be found there.
        kwargs["prepare_threshold"] = None
    pool = Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        name=f"poel-{name}",
        open=False,
        timeout=30,
    )
    pool.open(wait=False)
    return pool
