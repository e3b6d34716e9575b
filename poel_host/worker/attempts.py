"""Making an attempt out of a claimed row: its context and its entry in the held table.

What a handler gets depends on its lane: a greenlet job borrows from the job pool and
enqueues through the worker's queue client; a thread job gets connections and an
enqueue of its thread's own (a native thread must never touch the event loop's objects)
and a cancellation flag of its own, set at its timeout or at shutdown.

The context's connection factory holds the job's loans, never the entry (which holds the
context): a cycle per job would leave every finished job to the cyclic garbage collector,
whose collections then took a fifth of a no-op job's CPU.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent.event

from poel_host.jobs import JobContext
from poel_host.settings import Settings
from poel_host.worker.held import HeldJob
from poel_host.worker.job_connections import JobConnections, Loans
from poel_host.worker.progress import ProgressBoard
from poel_host.worker.threads import Threads


class Attempts:
    """Builds the held entry of each claimed row, for its lane's executor."""

    def __init__(
        self,
        settings: Settings,
        *,
        connections: JobConnections,
        enqueue: Callable[..., int],
        cancelling: gevent.event.Event,
        threads: Threads | None,
        progress: ProgressBoard,
        transitions: collections.Counter[tuple[str, str]],
        log: Any,
    ) -> None:
        self.settings = settings
        self.connections = connections
        self.enqueue = enqueue
        self.cancelling = cancelling  # the shutdown's: running jobs asked to stop
        self.threads = threads
        self.progress = progress  # ctx.progress notes there, from any executor
        self.transitions = transitions  # counted by each entry's moves (see held.py)
        self.log = log

    def make(self, executor: str, row: dict[str, Any]) -> HeldJob:
        loans = Loans()
        borrow: Any = self.connections.borrow
        cancel: Any = self.cancelling
        enqueue: Any = self.enqueue
        if executor == "thread":
            assert self.threads is not None
            borrow = self.threads.borrow  # a connection of the thread's own
            enqueue = self.threads.enqueue  # so is its enqueue's: none of the hub's
            cancel = self.threads.cancel.new()  # its own: set at its timeout or shutdown
        ctx = JobContext(
            job_id=row["id"],
            job_type=row["job_type"],
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            queue=row["queue"],
            enqueued_at=row["created_at"],
            log=self.log.bind(jobId=row["id"], jobType=row["job_type"], attempt=row["attempts"]),
            settings=self.settings,
            snoozes=row.get("snoozes", 0),
            _connection_factory=partial(borrow, loans),
            _enqueue=enqueue,
            _cancel_event=cancel,
            _progress=partial(self.progress.note, row["id"], str(row["lease_token"])),
        )
        return HeldJob(row=row, ctx=ctx, loans=loans, counts=self.transitions)
