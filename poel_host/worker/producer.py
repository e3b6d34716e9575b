"""Claiming jobs: the producer's claim loops.

Two loops each take up to the number of free runner slots in one statement (at most half
the concurrency, or CLAIM_MIN jobs, whichever is more), so that one claim's round trip
overlaps the other's jobs, then wait for a slot, a wake-up (a NOTIFY, a rescue) or the
poll interval. The second loop claims only while claims come back full (a backlog): an
idle worker makes one claim per wake-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent.event

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.held import Held
from poel_host.worker.runners import Runners
from poel_host.worker.supervisor import Service

CLAIM_MIN = 25
CLAIMERS = 2  # claim loops per worker


class Producer:
    """Claims jobs for the runners, which ``spawn`` hands each claimed row to."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        owner: str,
        job_types: list[str],
        slots: Runners[Any],
        held: Held,
        spawn: Callable[[dict[str, Any]], None],
        stopping: gevent.event.Event,
        log: Any,
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner
        self.job_types = job_types
        self.slots = slots
        self.held = held
        self.spawn = spawn
        self.stopping = stopping
        self.log = log
        self.wake = gevent.event.Event()
        self.backlog = gevent.event.Event()  # the last claim came back full
        # Claim size: half the pool, so that a claim's round trip overlaps the last
        # claim's jobs, but no fewer than CLAIM_MIN (or the whole pool when it is
        # smaller): a claim costs about a millisecond however many rows it takes, which
        # a small batch would not pay back.
        c = settings.worker_concurrency
        self.batch = max((c + 1) // 2, min(c, CLAIM_MIN))

    def loops(self) -> list[ClaimLoop]:
        return [ClaimLoop(self, helper=i > 0) for i in range(CLAIMERS)]

    def stop(self) -> None:
        self.wake.set()
        self.backlog.set()

    def claim(self, limit: int) -> list[dict[str, Any]]:
        if not self.job_types:
            return []
        return self.store.claim_jobs(
            job_types=self.job_types,
            queues=self.settings.queue_names,
            limit=limit,
            owner=self.owner,
            lease_ms=self.settings.lease_ms,
            # A retry becomes due while its last attempt's outcome is still being written
            # (or retried through an outage): this worker must not claim it again until
            # that attempt has left the held table.
            held=list(self.held),
        )


class ClaimLoop(Service):
    """One claim loop; the ``helper`` loop claims only during a backlog."""

    def __init__(self, producer: Producer, *, helper: bool) -> None:
        super().__init__()
        self.producer = producer
        self.helper = helper
        self.name = "producer" + (" (backlog)" if helper else "")

    def run(self) -> None:
        p = self.producer
        failures = 0
        while not p.stopping.is_set():
            if self.helper and not p.backlog.is_set():
                p.backlog.wait(timeout=1.0)
                continue
            free = p.slots.free_count()
            if free <= 0:
                p.slots.wait_available(timeout=1.0)
                continue
            p.wake.clear()
            # Slots are held while the claim is in flight, so claims never take more jobs
            # than the pool can start at once.
            limit = min(free, p.batch)
            p.slots.reserve(limit)
            try:
                rows = p.claim(limit)
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                p.log.warning("claim failed", error=one_line(exc), retry_in=pause(failures))
                p.stopping.wait(pause(failures))
                continue
            finally:
                p.slots.unreserve(limit)
            for row in rows:
                p.spawn(row)
            self.passed()
            if len(rows) == limit:
                p.backlog.set()
                continue
            p.backlog.clear()
            if not self.helper:
                p.wake.wait(p.settings.poll_interval_ms / 1000)
