"""Keeping the leases of the jobs this worker holds.

Every third of ``POEL_LEASE_MS`` one statement writes the worker's heartbeat in the registry
of workers (:mod:`poel_host.worker.registry`), which is the lease of every job it holds:
one row, whatever the number of jobs (a worker holding 1,000 long jobs used to rewrite
1,000 rows each interval). The same statement reads which held attempts are still this
worker's (their lease tokens): one that is not (another worker rescued it) is marked lost:
its outcome will not be recorded, since by now another worker may run it. This service
does nothing else, so that no other work (a prune of a large backlog, a slow rescue) can
delay a heartbeat past the lease.

**A thread, not a greenlet.** The renewals run on a real OS thread with a connection of
its own. A greenlet handler that computes in pure Python (or calls a library gevent cannot
make cooperative) holds the gevent hub until it returns; a lease keeper on a greenlet
would not run meanwhile, so a job well within its timeout would lose its lease and run a
second time on another worker. This thread needs nothing from the main hub: it sleeps on an
OS lock, and psycopg's gevent-aware waits, called here, run on the hub gevent gives each OS
thread of its own. (A handler holding the GIL still lets it in: CPython hands the GIL over
every few milliseconds.)

**Past its timeout, a lease is given up.** A handler that blocks the hub cannot be
interrupted by its gevent timeout. Once a job is past its deadline by more than one
renewal interval (time enough for a timed-out handler to be taken back and its outcome
handed to the completer), the keeper gives its lease up: it writes the job a lease of its
own that has expired (``give_up_leases``; retried at the next pass if that fails), and
the job's log says so once; any worker's rescuer requeues the job ("worker lost"), for
any worker to run again. (The watchdog names the code that blocks the hub.) If the handler finally
returns, its outcome is recorded only if no other worker took the job meanwhile: the
completer writes only rows this worker still leases. A job whose outcome is with the
completer, or that the drain is handing back, is renewed whatever its deadline.

**Between the thread and the greenlets.** The held table is a dict that greenlets change;
the thread copies it (one C call under the GIL) and reads each entry's flags, and only
ever sets ``lost`` on an entry. Counters go to ``Metrics.leases``, written by the thread
alone. The greenlet side, :meth:`LeaseKeeper.run`, starts the thread, reports its good
passes to the supervisor and raises if it died, so the supervisor restarts both; killed at
the end of the drain (after the completer and the hand-back), it stops the thread, which
closes its connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent import monkey

from poel_host.backoff import pause
from poel_host.database import KeptConnection
from poel_host.errors import DatabaseUnavailable, error_text, one_line
from poel_host.green import NativeEvent
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.held import LOST, Held, HeldJob
from poel_host.worker.metrics import LeaseCounts
from poel_host.worker.registry import Registration
from poel_host.worker.supervisor import Service

STOP_WAIT_S = 3.0  # how long stopping waits for the thread to close its connection


class LeaseThreadDied(RuntimeError):
    """The lease thread ended of an unexpected error (the supervisor restarts it)."""


class _Run:
    """One life of the lease thread: its stop signal, and what it tells the greenlet side.
    Each field is written by one side only; the thread wakes the greenlet side (``wake``:
    an async watcher's ``send``, the one call of gevent's meant for other threads) after
    each pass and when it ends."""

    def __init__(self, wake: Callable[[], None]) -> None:
        # An event of the OS, not gevent's: the thread sleeps on it between renewals.
        self._stop = NativeEvent()  # set by the greenlet side
        self._wake = wake
        self.passes = 0  # thread: renewal passes that went well
        self.cancels: list[int] = []  # thread appends, greenlet side takes: asked to stop
        self.died: BaseException | None = None  # thread: why it ended, if not asked to
        self.ended = False  # thread: its connection is closed

    def sleep(self, seconds: float) -> bool:
        """On the thread: wait ``seconds`` or until stopped; True if stopped."""
        return self._stop.wait(seconds)

    def wake(self) -> None:
        """On the thread: have the greenlet side look (a no-op once it stopped looking)."""
        with contextlib.suppress(Exception):
            self._wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


class LeaseKeeper(Service):
    name = "leases"

    def __init__(
        self,
        settings: Settings,
        *,
        owner: str,
        held: Held,
        log: Any,
        counts: LeaseCounts | None = None,
        registration: Registration | None = None,
        cancel: Callable[[int], object] | None = None,
    ) -> None:
        super().__init__()
        self.cancel = cancel  # a held job asked to stop (cancels.request), on the hub
        self.settings = settings
        self.owner = owner
        self.registration = registration  # None: no heartbeat (a keeper under test)
        self.lease_ms = settings.lease_ms
        self.held = held
        self.log = log
        self.counts = counts if counts is not None else LeaseCounts()
        self._given_up: dict[int, HeldJob] = {}  # the thread's: jobs whose lease it gave up
        self._to_give_up: dict[int, HeldJob] = {}  # the thread's: given up, not yet written

    @property
    def interval(self) -> float:
        return self.lease_ms / 3000

    # The greenlet side ------------------------------------------------------------------

    def run(self) -> None:
        woken = gevent.event.Event()
        watcher = gevent.get_hub().loop.async_(ref=False)
        watcher.start(woken.set)
        run = _Run(watcher.send)
        monkey.get_original("_thread", "start_new_thread")(self._keep, (run,))
        try:
            seen = 0
            while True:
                woken.wait()
                woken.clear()  # before reading: the thread writes, then wakes
                if run.died is not None:
                    raise LeaseThreadDied(
                        f"lease renewal thread died: {error_text(run.died)}"
                    ) from run.died
                if run.ended:
                    raise LeaseThreadDied("lease renewal thread ended")
                while run.cancels:
                    job_id = run.cancels.pop()
                    if self.cancel is not None:
                        self.cancel(job_id)  # a no-op for one the listener stopped already
                if run.passes != seen:
                    seen = run.passes
                    self.passed()
        finally:
            run.stop()
            deadline = time.monotonic() + STOP_WAIT_S
            while not run.ended and time.monotonic() < deadline:
                woken.wait(timeout=deadline - time.monotonic())
                woken.clear()
            watcher.close()

    # The thread -------------------------------------------------------------------------

    def _keep(self, run: _Run) -> None:
        """The lease thread's loop (a real OS thread: never touch the main hub here)."""
        s = self.settings
        source = KeptConnection(
            s.dsn, name="leases", pooler=s.pooler, connect_timeout=s.connect_timeout_s
        )
        store = Store(s.schema_name, source)
        failures = 0
        try:
            # At once (a restarted keeper's jobs have waited), then every interval; after a
            # failure, sooner: two more missed intervals lose every lease.
            while True:
                try:
                    run.cancels.extend(self.renew(store) or ())
                except DatabaseUnavailable as exc:
                    failures += 1
                    self.counts.failures += 1
                    self.log.warning("lease renewal failed", error=one_line(exc))
                else:
                    failures = 0
                    run.passes += 1
                    run.wake()
                if run.sleep(min(self.interval, pause(failures)) if failures else self.interval):
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by run(), on the greenlet side
            run.died = exc
        finally:
            with contextlib.suppress(Exception):
                source.close()
            with contextlib.suppress(Exception):
                # psycopg's waits made gevent create a hub for this thread: free its loop.
                gevent.get_hub().destroy(destroy_loop=True)
            run.ended = True
            run.wake()

    def renew(self, store: Store) -> set[int]:
        """One pass (on the thread): give up the leases of held attempts past their time,
        then the heartbeat, which renews the others and says which are still this
        worker's; returns those of them whose job was asked to stop (``cancel_job``)."""
        held = self.held.copy()  # one C call: atomic with respect to the greenlets
        now = time.monotonic()
        renewing = []
        for entry in held.values():
            if entry.lost:
                continue
            if self._past_time(entry, now):
                self._give_up(entry, now)
            else:
                renewing.append(entry)
        for job_id, entry in list(self._given_up.items()):
            if held.get(job_id) is not entry:
                del self._given_up[job_id]  # forgotten: its job may be claimed again
                self._to_give_up.pop(job_id, None)
        giving_up = [e for e in self._to_give_up.values() if not e.lost]
        if giving_up:
            given = store.give_up_leases([(entry.id, entry.token) for entry in giving_up])
            for entry in giving_up:
                del self._to_give_up[entry.id]
                if entry.id not in given and not entry.done and entry.move(LOST):
                    self.counts.lost += 1  # rescued already: not this worker's any more
        registration = self.registration
        if not renewing and registration is None:
            return set()
        registered, kept, cancel = store.heartbeat(
            self.owner,
            attempts=[(entry.id, entry.token) for entry in renewing],
            draining=registration is not None and registration.draining,
        )
        if renewing:
            self.counts.renewals += 1
        if registration is not None and not registered:
            registration.registered = False  # no claim until it is written again
            registration.register(store)
            self.log.warning("worker registered again: its row was gone", owner=self.owner)
        for entry in renewing:
            # Only this attempt was asked about (its token): its job may have been rescued
            # and claimed again meanwhile. An attempt whose outcome is with the completer is
            # left to it: its outcome may be committed already with the completer not yet
            # told, and if the lease is lost the completer says so.
            if entry.id not in kept and not entry.done and entry.move(LOST):
                self.counts.lost += 1
                entry.ctx.log.warning("job lease lost; its outcome will not be recorded")
        return cancel

    def _past_time(self, entry: HeldJob, now: float) -> bool:
        """Whether a held attempt ran past its time: a handler past its timeout (and a
        renewal interval of grace: time for a timed-out handler to be taken back), or an
        outcome still not written a lease after its deadline (the completer cannot write
        it: its lease must not be kept alive for ever). A deadline of 0 is an attempt not
        started yet; one being handed back is renewed until it is."""
        if not entry.deadline or entry.released:
            return False
        if entry.done:
            return now > entry.deadline + self.lease_ms / 1000
        return now > entry.deadline + self.interval

    def _give_up(self, entry: HeldJob, now: float) -> None:
        if self._given_up.get(entry.id) is entry:
            return
        self._given_up[entry.id] = entry
        self._to_give_up[entry.id] = entry
        self.counts.given_up += 1
        entry.ctx.log.warning(
            "job outcome still not written a lease past its deadline: lease given up"
            if entry.done
            else "job past its timeout: lease given up, another worker can take the job",
            overdue_s=round(now - entry.deadline, 3),
        )
