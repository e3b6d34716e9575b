"""Claiming jobs: the producer's lanes and their claim loops.

A lane is the job types of one executor with the capacity that runs them: the greenlet
runners (``WORKER_CONCURRENCY``), the thread runners (``POEL_THREADS``), the process
pool's children. Each lane claims only its own types, only up to its own free capacity,
so a claimed job does not wait for a thread or a child (but for the process lane's short
jobs, see ``processes.py``); a worker whose types are all greenlet types has one lane and
claims exactly as before.

Each lane has two loops. Each takes up to the lane's free capacity in one statement (at
most half of it, or CLAIM_MIN jobs, whichever is more), so that one claim's round trip
overlaps the other's jobs, then waits for room, a wake-up (a NOTIFY, a rescue) or the
poll interval. The second loop claims only while claims come back full (a backlog): an
idle worker makes one claim per wake-up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent.event

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.held import Held
from poel_host.worker.registry import Registration
from poel_host.worker.supervisor import Service

CLAIM_MIN = 25
CLAIMERS = 2  # claim loops per lane


class Capacity(Protocol):
    """What runs a lane's jobs: :class:`Runners`, or the process pool. Each counts its
    taken slots with a :class:`~poel_host.worker.slots.Slots` (the same rule for when a
    slot frees) and says itself how many slots it has (``capacity``, ``free_count``)."""

    def __len__(self) -> int: ...
    def running(self) -> int: ...
    def capacity(self) -> int: ...
    def free_count(self) -> int: ...
    def wait_available(self, timeout: float | None = None) -> None: ...
    def reserve(self, n: int) -> None: ...
    def unreserve(self, n: int) -> None: ...
    def submit(self, item: Any) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def kill(self, timeout: float | None = None) -> list[Any]: ...


@dataclass
class Lane:
    """The job types of one executor and the capacity that runs them."""

    executor: str
    job_types: list[str]
    slots: Capacity
    wake: gevent.event.Event = field(default_factory=gevent.event.Event)
    backlog: gevent.event.Event = field(default_factory=gevent.event.Event)  # last claim full
    # When the last steered claim said to look again (time.monotonic()): a rate window it
    # found full opens then, or now when it took fewer jobs than asked. The claim loop
    # sleeps no longer than that, instead of polling a closed window.
    reopens_at: float | None = None

    @property
    def size(self) -> int:
        """The capacity when all of it is free."""
        return self.slots.capacity()

    @property
    def batch(self) -> int:
        # Claim size: half the capacity, so that a claim's round trip overlaps the last
        # claim's jobs, but no fewer than CLAIM_MIN (or all of it when it is smaller): a
        # claim costs about a millisecond however many rows it takes, which a small
        # batch would not pay back.
        return max((self.size + 1) // 2, min(self.size, CLAIM_MIN))


class Producer:
    """Claims jobs for the lanes; ``spawn`` hands each claimed row to its lane."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        owner: str,
        lanes: list[Lane],
        held: Held,
        spawn: Callable[[Lane, dict[str, Any]], None],
        stopping: gevent.event.Event,
        log: Any,
        on_claim: Callable[[str, float, int], None] = lambda executor, seconds, jobs: None,
        registration: Registration | None = None,
    ) -> None:
        self.store = store
        # serve's: its heartbeat holds the jobs it claims. None (the test kit's run_job):
        # each job claimed gets a lease of its own, POEL_LEASE_MS, that expires unrenewed.
        self.registration = registration
        self.on_claim = on_claim  # Metrics.claimed: each claim's round trip
        self.settings = settings
        self.owner = owner
        self.lanes = [lane for lane in lanes if lane.job_types]
        self.held = held
        self.spawn = spawn
        self.stopping = stopping
        self.log = log
        self.unanswered: list[str] = []  # tokens of claims whose answer was lost
        self.steering = SteeringCache(store)

    def loops(self) -> list[ClaimLoop]:
        return [ClaimLoop(self, lane, helper=i > 0) for lane in self.lanes for i in range(CLAIMERS)]

    def wake(self) -> None:
        """Jobs may be due (a NOTIFY, a rescue): every lane's loop looks."""
        for lane in self.lanes:
            lane.wake.set()

    def stop(self) -> None:
        for lane in self.lanes:
            lane.wake.set()
            lane.backlog.set()

    def claim(self, lane: Lane, limit: int) -> list[dict[str, Any]]:
        """Claim up to ``limit`` jobs for ``lane``: rows carrying their ``lease_token``.

        A claim whose answer is lost (the connection broke as it committed) leaves jobs
        running under a token only this worker knows: the token is kept, and those jobs
        are handed back, their attempts not counted, before the next claim."""
        if self.unanswered:
            self.release_unanswered()
        lease_ms: int | None = self.settings.lease_ms
        if self.registration is not None:
            if not self.registration.registered:
                # Raises DatabaseUnavailable while the database is away: no claim then.
                self.registration.register(self.store)
            lease_ms = None
        token = str(uuid.uuid4())
        started = time.perf_counter()
        try:
            # Steered jobs first: their gates bound what they take, and the plain claim
            # fills the rest (taking it first, a backlog of plain jobs would leave the
            # steered ones no room).
            rows: list[dict[str, Any]] = []
            lane.reopens_at = None
            if self.steering.needed(lane.job_types):
                rows, reopens = self.store.claim_steered(
                    job_types=lane.job_types,
                    queues=self.settings.queue_names,
                    limit=limit,
                    owner=self.owner,
                    token=token,
                    lease_ms=lease_ms,
                )
                lane.reopens_at = reopens_in(reopens)
            if len(rows) < limit:
                rows += self.store.claim_jobs(
                    job_types=lane.job_types,
                    queues=self.settings.queue_names,
                    limit=limit - len(rows),
                    owner=self.owner,
                    token=token,
                    lease_ms=lease_ms,
                )
        except DatabaseUnavailable:
            self.unanswered.append(token)
            raise
        self.on_claim(lane.executor, time.perf_counter() - started, len(rows))
        for row in rows:
            row["lease_token"] = token
        return rows

    def release_unanswered(self) -> None:
        """Hand back the jobs of claims whose answer was lost (raises DatabaseUnavailable
        while the database is away: the tokens are kept for the next try)."""
        tokens = list(self.unanswered)
        ids = self.store.release_claims(tokens)
        del self.unanswered[: len(tokens)]
        if ids:
            self.log.warning(
                "jobs of a claim whose answer was lost handed back; attempts not counted",
                jobs=ids,
            )


class ClaimLoop(Service):
    """One claim loop of a lane; the ``helper`` loop claims only during a backlog."""

    def __init__(self, producer: Producer, lane: Lane, *, helper: bool) -> None:
        super().__init__()
        self.producer = producer
        self.lane = lane
        self.helper = helper
        suffix = "" if lane.executor == "greenlet" else f" ({lane.executor})"
        self.name = "producer" + suffix + (" backlog" if helper else "")

    def run(self) -> None:
        p, lane = self.producer, self.lane
        failures = 0
        while not p.stopping.is_set():
            if self.helper and not lane.backlog.is_set():
                lane.backlog.wait(timeout=1.0)
                continue
            free = lane.slots.free_count()
            if free <= 0:
                lane.slots.wait_available(timeout=1.0)
                continue
            lane.wake.clear()
            # Capacity is held while the claim is in flight, so claims never take more
            # jobs than the lane can start at once.
            limit = min(free, lane.batch)
            lane.slots.reserve(limit)
            try:
                rows = p.claim(lane, limit)
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                p.log.warning("claim failed", error=one_line(exc), retry_in=pause(failures))
                p.stopping.wait(pause(failures))
                continue
            finally:
                lane.slots.unreserve(limit)
            for row in rows:
                p.spawn(lane, row)
            self.passed()
            if len(rows) == limit:
                lane.backlog.set()
                continue
            lane.backlog.clear()
            if not self.helper:
                lane.wake.wait(poll_wait(p.settings.poll_interval_ms / 1000, lane.reopens_at))


def reopens_in(seconds: float | None) -> float | None:
    """A reopening ``seconds`` from now (by the server's clock) on this process's
    monotonic clock."""
    return None if seconds is None else time.monotonic() + max(0.0, seconds)


def poll_wait(poll: float, reopens_at: float | None) -> float:
    """How long an idle claim loop waits: the poll interval, or less when the steered
    claim said to look again sooner (a few milliseconds after, so that a rate window is
    open when the claim comes)."""
    if reopens_at is None:
        return poll
    return max(0.0, min(poll, reopens_at - time.monotonic() + 0.002))


class SteeringCache:
    """Which job types and queues are steered, read at most once a second.

    The plain claim skips steered jobs in the database itself, so a stale cache can only
    make them wait (up to a second) for the steered claim, never run them unsteered."""

    TTL = 1.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self.types: set[str] = set()
        self.queues = False
        self.read_at = -self.TTL

    def forget(self) -> None:
        """Read again at the next claim (``run_once``: a test may have just steered)."""
        self.read_at = -self.TTL

    def needed(self, job_types: list[str]) -> bool:
        """Whether a claim for ``job_types`` must also run the steered claim."""
        if time.monotonic() - self.read_at >= self.TTL:
            self.types, self.queues = self.store.steered_names()
            self.read_at = time.monotonic()
        return self.queues or not self.types.isdisjoint(job_types)
