"""Connections to PostgreSQL: the only module that opens them.

Every connection Poel opens (the worker's two pools, health's, the LISTEN connection, the
enqueuer's, the CLI's) comes from here, so each honours ``POEL_POOLER``: behind a
transaction pooler (PgBouncer, Supabase's on port 6543) consecutive transactions may land
on different server connections, where a statement psycopg prepared on another one does
not exist, so server-side preparation is switched off.

Driver errors met while connecting are translated into
:class:`~poel_host.errors.DatabaseUnavailable` with the password masked, so the CLI can
print them as one line.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from poel_host.dsn import redact_dsn
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import Settings

APPLICATION_NAME = "poel-host"
CHECKOUT_TIMEOUT_S = 5.0  # waiting longer for a pooled connection means the pool is stuck
T = TypeVar("T")
Connection = psycopg.Connection[dict[str, Any]]


def connection_options(
    name: str | None, *, pooler: str, autocommit: bool, connect_timeout: int
) -> dict[str, Any]:
    """psycopg's connection keywords for one of Poel's connections."""
    options: dict[str, Any] = {
        "autocommit": autocommit,
        "row_factory": dict_row,
        "connect_timeout": connect_timeout,
        "application_name": f"{APPLICATION_NAME}:{name}" if name else APPLICATION_NAME,
    }
    if pooler != "none":
        options["prepare_threshold"] = None
    return options


def connect(
    dsn: str,
    *,
    name: str | None = None,
    pooler: str = "none",
    autocommit: bool = True,
    connect_timeout: int = 5,
) -> Connection:
    """One connection with dict rows; DatabaseUnavailable if PostgreSQL cannot be reached."""
    options = connection_options(
        name, pooler=pooler, autocommit=autocommit, connect_timeout=connect_timeout
    )
    try:
        return psycopg.connect(dsn, **options)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(describe_connect_error(dsn, exc)) from None


def ping(dsn: str, *, timeout: int = 2) -> bool:
    """Whether a PostgreSQL server answers at ``dsn`` (libpq's ``PQping``): true even when
    it would refuse this user or database, false when nothing listens there."""
    conninfo = make_conninfo(dsn, connect_timeout=timeout)
    return pq.PGconn.ping(conninfo.encode()) in (pq.Ping.OK, pq.Ping.REJECT)


def describe_connect_error(dsn: str, exc: BaseException) -> str:
    reason = redact_dsn(one_line(exc))
    return f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {reason}"


@contextmanager
def connection(dsn: str, **kwargs: Any) -> Iterator[Connection]:
    """``with connection(dsn) as conn:`` -- a short-lived connection, closed afterwards."""
    conn = connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def connection_for(settings: Settings, name: str) -> contextlib.AbstractContextManager[Connection]:
    """A short-lived connection as ``settings`` say (URL, pooler, connect timeout)."""
    return connection(
        settings.dsn, name=name, pooler=settings.pooler, connect_timeout=settings.connect_timeout_s
    )


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

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` on a pooled connection (the store's way in)."""
        with self.connection(timeout=CHECKOUT_TIMEOUT_S) as conn:
            return work(conn)

    def getconn(self, timeout: float | None = None) -> Connection:
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
    pooler: str = "none",
    connect_timeout: int = 5,
    autocommit: bool = True,
) -> Pool:
    """A connection pool whose connections return dict rows.

    The pool is opened without waiting, so a worker can start (and report itself
    unhealthy) while the database is still down.
    """
    options = connection_options(
        name, pooler=pooler, autocommit=autocommit, connect_timeout=connect_timeout
    )
    pool = Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=options,
        name=f"poel-{name}",
        open=False,
        timeout=30,
    )
    pool.open(wait=False)
    return pool


class KeptConnection:
    """One connection, opened on first use and kept between uses (a Queue's, health's, the
    CLI's). One the server ended while it sat idle is replaced before use, without a round
    trip (``check_alive``); one that fails during ``work`` is discarded and the error
    raised, never retried here: the statement may have been committed before the failure,
    and running it again (an enqueue) could do it twice."""

    def __init__(
        self, dsn: str, *, name: str | None = None, pooler: str = "none", connect_timeout: int = 5
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.pooler = pooler
        self.connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # green under gevent; a real lock in a web app

    @property
    def is_open(self) -> bool:
        """Whether a connection is kept from an earlier use."""
        return self._conn is not None and not self._conn.closed

    def run(self, work: Callable[[Connection], T]) -> T:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    check_alive(conn)
                except psycopg.Error:
                    self._close()
                    conn = None
            if conn is None:
                conn = self._conn = connect(
                    self.dsn,
                    name=self.name,
                    pooler=self.pooler,
                    connect_timeout=self.connect_timeout,
                )
            try:
                return work(conn)
            except BaseException:
                # A failed statement (or a timeout that interrupted it) leaves the
                # connection unusable or busy; the next use opens another.
                if conn.closed or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    self._close()
                raise

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            with contextlib.suppress(psycopg.Error):  # closed next anyway
                conn.cancel_safe(timeout=3)
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._close()
