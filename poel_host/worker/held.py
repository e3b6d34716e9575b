"""The attempts a worker holds, and the one state machine each goes through.

A claimed attempt carries its job's row, its context and its lease token (new for each
claim: renewal, outcome and hand-back match on it in the database, so no stale worker,
thread or child can write over another attempt's fate). Its life, in this one place::

    claimed ──> running ──> pending ──> written
       │           │           └──────> lost
       │           ├──────> handing back ──> handed back
       └───────────┴──────────────────────┴──> lost

- **claimed**: in the held table, waiting for a runner, a thread or a child;
- **running**: its handler started (the executor set its deadline);
- **pending**: its outcome is with the completer, not written yet;
- **handing back**: stopped or never started at a shutdown (or claimed ahead for a child
  that never freed): it goes back to the queue, its attempt not counted;
- **written**, **handed back**, **lost** end it: the entry leaves the held table. Lost is
  an attempt whose lease another worker took (a rescue changed its token) or whose
  outcome could not be written at all: the database's copy of the job decides.

Every service reads the same table: the producer (not to claim a held job again), the
executor, the lease keeper (renewing every held attempt that is not past its time), the
completer and the drain. Each transition is checked and counted (``/metrics``); the
routine ones are the executor's "job started" and outcome lines, the others are logged
here at debug level with the job's fields.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from poel_host.jobs import JobContext
from poel_host.worker.job_connections import Loans

CLAIMED, RUNNING, PENDING = "claimed", "running", "pending"
HANDING_BACK, HANDED_BACK, WRITTEN, LOST = "handing back", "handed back", "written", "lost"
ENDED = frozenset({HANDED_BACK, WRITTEN, LOST})
NEXT: dict[str, frozenset[str]] = {
    CLAIMED: frozenset({RUNNING, HANDING_BACK, LOST}),
    RUNNING: frozenset({PENDING, HANDING_BACK, LOST}),
    PENDING: frozenset({WRITTEN, LOST}),
    HANDING_BACK: frozenset({HANDED_BACK, LOST}),
    HANDED_BACK: frozenset(),
    WRITTEN: frozenset(),
    LOST: frozenset(),
}

# Logged already by the executor ("job started", "job succeeded", "job retry scheduled",
# "job failed"), and on every job's path: counted, not logged again.
ROUTINE = frozenset({RUNNING, PENDING, WRITTEN})

Transitions = collections.Counter  # (from, to) -> how many times, for /metrics


class BadTransition(RuntimeError):
    """A bug: an attempt was moved to a phase its phase does not lead to."""


@dataclass(eq=False)
class HeldJob:
    """One attempt this worker holds a lease on."""

    row: dict[str, Any]
    ctx: JobContext
    loans: Loans = field(default_factory=Loans)  # its handler's job-pool connections
    phase: str = CLAIMED
    counts: Transitions[tuple[str, str]] | None = field(default=None, repr=False)
    cancel_requested: bool = False  # someone cancelled the job (see cancels.py)
    interrupt: Any = field(default=None, repr=False)  # stops its handler, while it runs

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def token(self) -> str:
        """The lease token of this attempt (its claim's)."""
        return str(self.row["lease_token"])

    def move(self, to: str, **fields: Any) -> bool:
        """Move to phase ``to``; False (nothing changes) if the attempt has ended already,
        which a service racing another (the lease thread, the drain) may find."""
        was = self.phase
        if was == to:
            return False
        if to not in NEXT[was]:
            if was in ENDED:
                return False
            raise BadTransition(f"job {self.id}: attempt cannot go from {was} to {to}")
        self.phase = to
        if self.counts is not None:
            self.counts[(was, to)] += 1
        if to not in ROUTINE:
            self.ctx.log.debug("attempt " + to, was=was, **fields)
        return True

    # Questions the services ask ---------------------------------------------------------

    @property
    def started(self) -> bool:
        """Its handler was started (whatever happened since)."""
        return bool(self.loans.deadline)

    @property
    def lost(self) -> bool:
        return self.phase == LOST

    @property
    def released(self) -> bool:
        """Being handed back, or handed back."""
        return self.phase in (HANDING_BACK, HANDED_BACK)

    @property
    def done(self) -> bool:
        """Its outcome is with the completer, or written."""
        return self.phase in (PENDING, WRITTEN)

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` by which the handler must be done (0: not started). Kept
        with the loans: the context's connection factory needs it and must not hold this
        entry (see ``Worker.spawn``)."""
        return self.loans.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self.loans.deadline = value


Held = dict[int, HeldJob]
