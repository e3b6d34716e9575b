"""Lending job-pool connections to handlers (``ctx.connection()``), and taking back what a
misbehaving handler did not give back properly.

Each connection is lent with a ``statement_timeout`` of the time its job has left. A
``gevent.Timeout`` that interrupts a query leaves the connection busy and the query running
on the server: it is cancelled and the connection discarded. A handler that never leaves
its ``with`` block, or uses its connection after the block, fails its attempt (that work is
rolled back) instead of starving the pool or breaking the next, innocent job.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus

from poel_host.store import Store

USED_AFTER_BLOCK = (
    "the handler used its connection after its `with ctx.connection()` block; "
    "that work was rolled back"
)
LEFT_OPEN = "the handler left a `with ctx.connection()` block open; its work was rolled back"


@dataclass(eq=False)  # compared (and weakly referenced) by identity
class Loans:
    """The job-pool connections of one job's handler, and by when they must be done."""

    lent: list[Any] = field(default_factory=list)  # connections its handler has now
    used: list[Any] = field(default_factory=list)  # connections its handler gave back
    misuse: str | None = None  # found by another job lent a connection it gave back
    deadline: float = 0.0  # time.monotonic() by which the handler must be done (0: not started)


class JobConnections:
    """The job pool as handlers see it."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        store: Store,
        *,
        transaction_pooler: bool,
        log: Any,
    ) -> None:
        self.pool = pool
        self.store = store
        self.transaction_pooler = transaction_pooler
        self.log = log
        self._borrowed: set[int] = set()  # id() of the connections lent out
        # id() of a connection -> the loans of the job that last gave it back (while they live)
        self._given_back_by: weakref.WeakValueDictionary[int, Loans] = weakref.WeakValueDictionary()

    @contextmanager
    def borrow(self, loans: Loans) -> Iterator[psycopg.Connection[Any]]:
        """A connection for a ``with`` block: one transaction, committed at its end, whose
        statements end before the job's deadline."""
        remaining = max(1, int((loans.deadline - time.monotonic()) * 1000))
        conn = self._lend(remaining)
        loans.lent.append(conn)
        try:
            try:
                yield conn
            except BaseException:
                if conn in loans.lent:  # not taken back already (see reclaim)
                    abandon(conn)
                raise
            conn.commit()
        finally:
            self._give_back(loans, conn)

    def reclaim(self, loans: Loans, log: Any) -> str | None:
        """Take back what a finished handler did not give back properly, and return the
        misuse (it fails the attempt: that work is lost). A connection whose block it never
        left is closed (a reference the handler kept is then useless) and replaced. One it
        used again after its block sits in the pool in a transaction: that is rolled back
        (not closed: another greenlet may be waiting on it; the rollback waits for the
        connection's lock)."""
        problem = loans.misuse
        for conn in list(loans.lent):
            problem = LEFT_OPEN
            conn.close()
            self._give_back(loans, conn)
        for conn in loans.used:
            if (
                id(conn) not in self._borrowed
                and not conn.closed
                and conn.info.transaction_status != TransactionStatus.IDLE
            ):
                problem = USED_AFTER_BLOCK
                with contextlib.suppress(psycopg.Error):  # a broken one the pool replaces
                    conn.rollback()
        loans.used.clear()
        if problem:
            log.warning("handler misused a database connection", error=problem)
        return problem

    def _give_back(self, loans: Loans, conn: psycopg.Connection[Any]) -> None:
        if conn not in loans.lent:  # taken back already when its handler ended
            return
        loans.lent.remove(conn)
        loans.used.append(conn)
        self._borrowed.discard(id(conn))
        self._given_back_by[id(conn)] = loans
        self.pool.putconn(conn)

    def _lend(self, timeout_ms: int) -> psycopg.Connection[Any]:
        """A connection with its statement_timeout set. One that the server ended before it
        could be used (terminated as it was lent) is replaced: the handler has run nothing
        on it yet, so a lost connection does not cost the job an attempt."""
        for attempt in range(1, 4):
            conn: psycopg.Connection[Any] = self.pool.getconn()
            self._borrowed.add(id(conn))  # before it is used: see reclaim
            last = self._given_back_by.pop(id(conn), None)
            try:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    # The last job to give it back used it after its block: that attempt
                    # fails (see reclaim). Not closed under that handler (a greenlet may be
                    # waiting on its socket): the rollback waits for the connection's lock,
                    # so for any statement in flight, then cleans it.
                    if last is not None:
                        last.misuse = USED_AFTER_BLOCK
                    self.log.warning("a pooled connection was used outside its block; rolled back")
                    conn.rollback()
                self._set_timeout(conn, timeout_ms)
                return conn
            except BaseException as exc:
                self._borrowed.discard(id(conn))
                self.pool.putconn(conn)
                if attempt == 3 or not (isinstance(exc, psycopg.OperationalError) and conn.closed):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _set_timeout(self, conn: psycopg.Connection[Any], timeout_ms: int) -> None:
        set_timeout(self.store, conn, timeout_ms, transaction_pooler=self.transaction_pooler)


def set_timeout(
    store: Store, conn: psycopg.Connection[Any], timeout_ms: int, *, transaction_pooler: bool
) -> None:
    """Bound the statements of a handler's connection (not in a transaction yet) by the
    time its job has left."""
    if transaction_pooler:
        # Opens the handler's transaction, with the timeout local to it: a session
        # setting would stay on a server connection the pooler gives other clients.
        store.set_statement_timeout(conn, timeout_ms, local=True)
    else:
        conn.autocommit = True
        store.set_statement_timeout(conn, timeout_ms, local=False)
        conn.autocommit = False


@contextmanager
def bounded_transaction(
    store: Store, conn: psycopg.Connection[Any], deadline: float, *, transaction_pooler: bool
) -> Iterator[psycopg.Connection[Any]]:
    """One ``with ctx.connection()`` block on ``conn``: its statements end before
    ``deadline`` (``time.monotonic()``), it commits at the end and is abandoned (rolled
    back, or closed if busy) on an exception. For the connections of a child process or a
    thread job, which are their own, not the job pool's."""
    remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
    set_timeout(store, conn, remaining_ms, transaction_pooler=transaction_pooler)
    try:
        yield conn
        conn.commit()
    except BaseException:
        abandon(conn)
        raise


def abandon(conn: psycopg.Connection[Any]) -> None:
    """Make a connection interrupted mid-query safe to hand back (it is closed if busy)."""
    if conn.closed:
        return
    if conn.info.transaction_status == TransactionStatus.ACTIVE:
        with contextlib.suppress(Exception):  # the connection is closed next anyway
            conn.cancel_safe(timeout=3)
        conn.close()
        return
    try:
        conn.rollback()
    except psycopg.Error:
        conn.close()
