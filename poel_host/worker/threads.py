"""The thread executor: ``Job(executor="thread")`` handlers on real OS threads.

For handlers whose time goes to native code that releases the GIL (numpy, an audio
codec, a blocking C client gevent cannot make cooperative): on a bounded pool of
``POEL_THREADS`` real threads, such code runs beside the event loop instead of freezing
it. The runner greenlet waits cooperatively for the thread's result, under the job's
timeout; a thread cannot be killed, so a handler past its timeout fails its attempt (and
is asked to stop through ``ctx.cancelled``) while its thread runs on to its end.

A handler on a thread gets its own connections (``ctx.connection()`` opens one for the
block, with the job's remaining time as ``statement_timeout``): the job pool belongs to
the event loop's greenlets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from gevent.threadpool import ThreadPool

from poel_host.database import connect
from poel_host.green import NativeEvent
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.job_connections import Loans, bounded_transaction


class Threads:
    """The bounded pool of threads, and what a handler on one of them gets."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.pool = ThreadPool(settings.threads)
        self.cancel = NativeEvent()  # set when the shutdown's grace runs out

    def call(self, handler: Callable[[Any, Any], object], payload: Any, ctx: Any) -> object:
        """``handler(payload, ctx)`` on a thread; its result or its exception."""
        return self.pool.spawn(handler, payload, ctx).get()

    @contextmanager
    def borrow(self, loans: Loans) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one ``with ctx.connection()`` block on a thread, whose
        statements end before the job's deadline (its own: never lent from the job pool)."""
        s = self.settings
        conn = connect(
            s.dsn,
            name="thread",
            pooler=s.pooler,
            autocommit=False,
            connect_timeout=s.connect_timeout_s,
        )
        try:
            pooler = s.pooler != "none"
            with bounded_transaction(self.store, conn, loans.deadline, transaction_pooler=pooler):
                yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.pool.kill()
