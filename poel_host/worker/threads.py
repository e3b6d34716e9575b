"""The thread executor: ``Job(executor="thread")`` handlers on real OS threads.

For handlers whose time goes to native code that releases the GIL (numpy, an audio
codec, a blocking C client gevent cannot make cooperative): on a bounded pool of
``POEL_THREADS`` real threads, such code runs beside the event loop instead of freezing
it. The runner greenlet waits cooperatively for the thread's result.

A thread cannot be killed, so a slot is free only when its handler has really returned.
The job's timeout counts from when its thread starts it; at the deadline the job is asked
to stop (its own ``ctx.cancelled``), its runner keeps the slot and waits for the handler
to return, and only then is the attempt reported as timed out. Meanwhile the thread is
*stuck*: counted in ``/metrics`` (``poel_threads_stuck``), and once stuck for longer than
a lease renewal interval (when the lease keeper gives the job up) reported by ``/health``.

No native thread touches an object of the event loop (a gevent lock, event, pool or
connection): a handler on a thread gets its own connections (``ctx.connection()`` opens
one for the block, with the job's remaining time as ``statement_timeout``), enqueues on a
connection its thread keeps (``ctx.enqueue``), and waits on native locks.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import gevent
import psycopg
from gevent import monkey
from gevent.threadpool import ThreadPool
from psycopg.pq import TransactionStatus

from poel_host.database import check_alive, connect
from poel_host.green import NativeEvent
from poel_host.jobs import Job, JobContext
from poel_host.queue import Queue
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.job_connections import Loans, bounded_transaction

_native_local: Any = monkey.get_original("_thread", "_local")
_native_lock: Any = monkey.get_original("_thread", "allocate_lock")

STUCK = "threads"  # the key of stuck threads in the worker's problems (see /health)


class ThreadTimedOut(Exception):
    """A thread job's handler ran past its timeout (and has returned since)."""


class Cancels:
    """Cancellation for thread jobs: one :class:`NativeEvent` a job (set at its deadline),
    all of them set by ``set()`` at shutdown (and those made after it start set)."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[NativeEvent] = weakref.WeakSet()
        self._set = False

    def new(self) -> NativeEvent:
        event = NativeEvent()
        if self._set:
            event.set()
        else:
            self._live.add(event)
        return event

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for event in list(self._live):
            event.set()


class _Start:
    """When the thread started the handler (written by the thread: a float, no lock)."""

    at: float | None = None


class Threads:
    """The bounded pool of threads, and what a handler on one of them gets."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        jobs: Mapping[str, Job],
        problems: MutableMapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = ThreadPool(settings.threads)
        self.cancel = Cancels()  # .set() when the shutdown's grace runs out
        self.problems: MutableMapping[str, str] = problems if problems is not None else {}
        # Past its deadline by this long, a stuck thread makes the worker unhealthy: the
        # lease keeper gives its job up then (one renewal interval, see leases.py).
        self.stuck_grace_s = settings.lease_ms / 3000
        self.stuck: dict[int, float] = {}  # job id -> time.monotonic() of its deadline
        self._over_grace: dict[int, str] = {}  # job id -> its job type, stuck past grace
        # Validates follow-ups; never opens its own connection (each call passes one).
        self._queue = Queue.for_settings(settings, jobs)
        self._local = _native_local()  # each thread's kept enqueue connection
        self._kept: list[psycopg.Connection[Any]] = []
        self._kept_lock = _native_lock()

    # The runner greenlet's side ---------------------------------------------------------

    def call(
        self,
        handler: Callable[[Any, JobContext], object],
        payload: Any,
        ctx: JobContext,
        loans: Loans,
        seconds: float,
    ) -> object:
        """``handler(payload, ctx)`` on a thread: its result or its exception, or
        :class:`ThreadTimedOut` once a handler past its timeout has returned."""
        start = _Start()
        result = self.pool.spawn(_run, handler, payload, ctx, loans, seconds, start)
        while not result.ready():
            # The deadline counts from when the thread starts the handler.
            left = seconds if start.at is None else start.at + seconds - time.monotonic()
            if left <= 0:
                self._overrun(ctx, result, seconds)
                raise ThreadTimedOut
            result.wait(left)
        outcome = result.get()
        if isinstance(outcome, _Raised):
            raise outcome.exc
        return outcome

    def _overrun(self, ctx: JobContext, result: Any, seconds: float) -> None:
        """Ask the handler to stop and hold its slot until it returns (whatever it
        raises then is not reported: its attempt timed out)."""
        ctx._cancel_event.set()
        ctx.log.warning(
            "thread job past its timeout; its slot stays taken until its handler returns",
            timeout=seconds,
        )
        job_id = ctx.job_id
        self.stuck[job_id] = time.monotonic()
        try:
            if not result.wait(self.stuck_grace_s):
                self._over_grace[job_id] = ctx.job_type
                self._report()
                result.wait()
        except gevent.GreenletExit:
            # The drain gave up on it: report the attempt (timed out) now; the thread
            # ends with the process.
            ctx.log.warning("stuck thread job abandoned by the shutdown")
            return
        finally:
            overrun = time.monotonic() - self.stuck.pop(job_id)
            if self._over_grace.pop(job_id, None) is not None:
                self._report()
        ctx.log.info("stuck thread job returned", overrun=round(overrun, 3))

    def _report(self) -> None:
        """Keep the worker's problems (``/health``) saying which threads are stuck."""
        if not self._over_grace:
            self.problems.pop(STUCK, None)
            return
        jobs = ", ".join(f"job {i} ({t})" for i, t in sorted(self._over_grace.items()))
        self.problems[STUCK] = (
            f"{len(self._over_grace)} stuck thread(s), each job past its timeout by over "
            f"{self.stuck_grace_s:g}s and still running: {jobs}"
        )

    def gauges(self) -> dict[str, tuple[str, int]]:
        return {
            "poel_threads_stuck": (
                "Thread jobs past their timeout whose handler has not returned.",
                len(self.stuck),
            )
        }

    # The thread's side ------------------------------------------------------------------

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

    def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        """``ctx.enqueue`` on a thread: validated as :meth:`Queue.enqueue` does, stored on
        the caller's ``connection=`` or on a connection this thread keeps (never the event
        loop's: its lock and socket belong to the hub's greenlets)."""
        if options.get("connection") is not None:
            return self._queue.enqueue(job_type, payload, **options)
        conn = self._kept_connection()
        try:
            return self._queue.enqueue(job_type, payload, connection=conn, **options)
        except BaseException:
            # A failed or interrupted statement leaves it unusable: the next opens another.
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                self._local.conn = None
                conn.close()
            raise

    def _kept_connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                check_alive(conn)
                return conn
            except psycopg.Error:
                conn.close()  # ended by the server while idle: replaced
        s = self.settings
        conn = connect(s.dsn, name="thread", pooler=s.pooler, connect_timeout=s.connect_timeout_s)
        self._local.conn = conn
        with self._kept_lock:
            self._kept = [c for c in self._kept if not c.closed]
            self._kept.append(conn)
        return conn

    def close(self) -> None:
        self.pool.kill()
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            conn.close()


class _Raised:
    """A handler's exception, returned by its thread rather than raised: gevent's thread
    pool would print every raised one to stderr."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _run(
    handler: Callable[[Any, JobContext], object],
    payload: Any,
    ctx: JobContext,
    loans: Loans,
    seconds: float,
    start: _Start,
) -> object:
    """On the thread: start the job's clock, then run the handler."""
    start.at = now = time.monotonic()
    loans.deadline = now + seconds  # what ctx.connection() and the lease keeper go by
    try:
        return handler(payload, ctx)
    except BaseException as exc:  # noqa: BLE001 - handed to the runner, which reports it
        return _Raised(exc)
