"""What a job's run amounts to: :class:`Ran` says what happened, :func:`decide` turns it
into the :class:`Outcome` the completer writes.

``decide`` is the one place that turns what happened (an error or none, whether the
worker stopped the job, whether retrying could help) into an outcome: success, a retry
with backoff, a failure (the dead letter), or a hand-back at shutdown that does not count
the attempt; and what a handler asked for itself: a snooze (back to the queue later, the
attempt not counted) or a discard (failed at once, no retry; see
:mod:`poel_host.snooze_discard`). Kept apart from the executor that runs handlers, so
that the process pool and the completer need only these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poel_host import backoff
from poel_host.jobs import Job
from poel_host.settings import Settings
from poel_host.store import OutcomeRow

# What an outcome is counted as (metrics, summaries, the job_finished hook).
LABELS = {
    "succeeded": "succeeded",
    "failed": "failed",
    "queued": "retry",
    "released": "released",
    "snoozed": "snoozed",
    "discarded": "discarded",
    "cancelled": "cancelled",
}
# The state each outcome writes (see Store.finish): a discard is a failure said early.
STATES = {"discarded": "failed"}


@dataclass
class Outcome:
    job_id: int
    # succeeded | failed | queued (a retry) | released (handed back) | snoozed (queued
    # again later, its attempt not counted) | discarded (failed at once) | cancelled
    # (someone cancelled it while it ran: see cancels.py)
    state: str
    error: str | None = None
    delay_ms: int = 0
    traceback: str | None = None  # kept in the error history beside the error
    token: str = ""  # the attempt's lease token: the outcome is written only if it matches
    result: str | None = None  # a success's result, as JSON text
    progress: tuple[float, str | None] | None = None  # the last report, not yet written

    def as_row(self) -> OutcomeRow:
        fraction, message = self.progress if self.progress is not None else (None, None)
        return (
            self.job_id,
            self.token,
            STATES.get(self.state, self.state),
            self.error,
            self.delay_ms,
            self.traceback,
            self.result,
            fraction,
            message,
        )

    @property
    def label(self) -> str:
        return LABELS[self.state]


@dataclass(frozen=True)
class Ran:
    """What happened when a job ran."""

    error: str | None = None  # None: the handler returned
    stopped: bool = False  # the worker stopped it (shutdown): not the job's fault
    final: bool = False  # retrying cannot help (an invalid payload, a worker bug)
    traceback: str | None = None  # where the handler raised
    result: str | None = None  # what the handler returned, as JSON text (None: nothing)
    snooze_s: float | None = None  # the handler snoozed (Snooze): run again this much later
    discarded: bool = False  # the handler discarded the job (Discard): ``error`` says why
    cancelled: bool = False  # someone cancelled the job, and its handler did not return


TRACEBACK_CHARS = 16_000  # the end of a traceback kept in the error history: where it raised


RETURNED = Ran()  # the handler returned: one shared instance (never changed) for speed
STOPPED = Ran(stopped=True)
CANCELLED = Ran(cancelled=True)


def decide(job: Job, row: dict[str, Any], ran: Ran, settings: Settings) -> Outcome:
    """The outcome of one run of ``job`` (claimed as ``row``)."""
    job_id, token = int(row["id"]), str(row["lease_token"])
    if ran.cancelled:
        return Outcome(job_id, "cancelled", token=token)
    if ran.stopped:
        return Outcome(job_id, "released", token=token)
    if ran.snooze_s is not None:
        snoozes = int(row.get("snoozes") or 0)
        if job.max_snoozes is None or snoozes < job.max_snoozes:
            return Outcome(job_id, "snoozed", delay_ms=round(ran.snooze_s * 1000), token=token)
        error = f"snoozed {snoozes} times already: max_snoozes is {job.max_snoozes}"
        return Outcome(job_id, "failed", error, token=token)
    if ran.discarded:
        return Outcome(job_id, "discarded", ran.error, traceback=ran.traceback, token=token)
    if ran.error is None:
        return Outcome(job_id, "succeeded", token=token, result=ran.result)
    if ran.final or row["attempts"] >= row["max_attempts"]:
        return Outcome(job_id, "failed", ran.error, traceback=ran.traceback, token=token)
    delay = backoff.retry_delay_ms(
        job,
        row["attempts"],
        base_ms=settings.retry_backoff_ms,
        max_ms=settings.retry_backoff_max_ms,
    )
    return Outcome(job_id, "queued", ran.error, delay, ran.traceback, token)
