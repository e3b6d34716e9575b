"""Running one claimed job, and deciding what its run amounts to.

:meth:`Executor.run` is what a runner greenlet calls for each job: validate the payload,
call the ``job_started`` hook, run the handler under the job's timeout, take back its
connections, then :func:`~poel_host.worker.outcomes.decide` the outcome (see
:mod:`poel_host.worker.outcomes`) and hand it to the completer.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import gevent
import psycopg

from poel_host import payloads
from poel_host.errors import InvalidPayload, error_text, one_line
from poel_host.jobs import Job, JobCancelled
from poel_host.plugins import Plugins
from poel_host.results import ResultError, encode_result
from poel_host.settings import Settings
from poel_host.snooze_discard import Discard, Snooze, discard_error, seconds_of
from poel_host.worker.cancels import CancelRequested, interrupt_greenlet, interrupt_thread
from poel_host.worker.held import HANDING_BACK, PENDING, RUNNING, Held, HeldJob
from poel_host.worker.job_connections import JobConnections
from poel_host.worker.outcomes import (
    CANCELLED,
    RETURNED,
    STOPPED,
    TRACEBACK_CHARS,
    Outcome,
    Ran,
    decide,
)
from poel_host.worker.progress import ProgressBoard
from poel_host.worker.threads import ThreadTimedOut


class Executor:
    """Runs held jobs on the calling greenlet; outcomes go to ``complete``."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        *,
        held: Held,
        connections: JobConnections,
        complete: Any,  # Completer.put
        finished: Any,  # Metrics.job_finished(job_type, outcome label, seconds)
        stopping: gevent.event.Event,
        log: Any,
        processes: Any = None,  # ProcessPool, when a loaded job type runs in processes
        threads: Any = None,  # Threads, when one runs on threads
        progress: ProgressBoard | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.jobs: dict[str, Job] = plugins.jobs
        self.held = held
        self.connections = connections
        self.complete = complete
        self.finished = finished
        self.stopping = stopping
        self.log = log
        self.processes = processes
        self.threads = threads
        self.progress = progress if progress is not None else ProgressBoard()
        # Per-job hooks cost a call per job even when no plugin implements them.
        self._hooked_started = bool(plugins.manager.hook.job_started.get_hookimpls())
        self._hooked_finished = bool(plugins.manager.hook.job_finished.get_hookimpls())

    def run(self, entry: HeldJob) -> None:
        row, ctx = entry.row, entry.ctx
        job = self.jobs[row["job_type"]]
        seconds = job.timeout_seconds(self.settings.job_timeout_ms)
        started = time.monotonic()
        # Before job_started: a connection that hook borrows is bounded by the job's time.
        entry.deadline = started + seconds
        entry.move(RUNNING)
        try:
            if self._hooked_started:
                self.plugins.call("job_started", ctx.log, ctx=ctx)
            ctx.log.debug("job started")
            ran = self._execute(job, entry, seconds)
        except gevent.GreenletExit:
            ran = STOPPED  # the drain stopped this runner: hand the job back
        except Exception as exc:  # a bug on the job's path must not strand the job:
            # without an outcome it would stay running, its lease renewed for ever.
            ctx.log.exception("job path failed")
            ran = Ran(f"worker error: {error_text(exc)}", final=True)
        try:
            outcome = decide(job, row, ran, self.settings)
        except Exception as exc:
            ctx.log.exception("deciding the job's outcome failed")
            outcome = Outcome(
                entry.id, "failed", f"worker error: {error_text(exc)}", token=entry.token
            )
        # The last progress report not yet written is written with the outcome (a job that
        # never reported any costs a dict lookup).
        pending = self.progress.take(entry.id, entry.token)
        if pending is not None and outcome.state != "released":
            outcome.progress = pending
        self._report(entry, outcome, round(time.monotonic() - started, 6))
        if outcome.state == "released":
            entry.move(HANDING_BACK)  # the drain hands it back
        else:
            # Even when the lease keeper found the lease lost: the completer writes only an
            # attempt whose token is still the job's, and says so when it is not.
            entry.move(PENDING)
            self.complete(outcome)

    def _execute(self, job: Job, entry: HeldJob, seconds: float) -> Ran:
        row, ctx = entry.row, entry.ctx
        try:
            # text from the claim (see claim_jobs): parsed here, one job at a time
            payload = payloads.validate(job, payloads.to_object(job.type, row["payload"]))
        except InvalidPayload as exc:
            return Ran(str(exc), final=True)
        if job.executor == "process":
            # The child validates again (it needs the model) and enforces no timer of its
            # own: the pool stops the child at the deadline, or when the job is cancelled.
            interrupt_greenlet(entry)
            try:
                if entry.cancel_requested:
                    return CANCELLED
                ran: Ran = self.processes.execute(entry, seconds)
            except CancelRequested:
                return CANCELLED
            finally:
                entry.interrupt = None
            return ran  # the child's own outcome came first
        # A thread's timeout counts from when its thread starts it (Threads.call); a
        # greenlet's from now (run() set the deadline just now).
        if job.executor == "thread":
            interrupt_thread(entry)
        else:
            interrupt_greenlet(entry)
        if entry.cancel_requested:  # while it waited for a runner
            entry.interrupt = None
            return CANCELLED
        timer = gevent.Timeout(None if job.executor == "thread" else seconds)
        timer.start()
        error: str | None = None
        trace: str | None = None
        result: object = None
        stopped = discarded = returned = False
        snooze_s: float | None = None
        try:
            if job.executor == "thread":
                result = self.threads.call(job.handler, payload, ctx, entry.loans, seconds)
            else:
                result = job.handler(payload, ctx)
            returned = True
        except CancelRequested:
            pass  # someone cancelled the job: see below
        except gevent.Timeout as exc:
            error = f"timed out after {seconds:g}s" if exc is timer else f"Timeout: {exc}"
        except ThreadTimedOut:
            error = f"timed out after {seconds:g}s"
        except psycopg.errors.QueryCanceled as exc:
            # The handler connection's statement_timeout is the job's remaining time: when
            # the server cancels first, it is the same timeout, reported the same way.
            if time.monotonic() >= entry.deadline - 0.05:
                error = f"timed out after {seconds:g}s"
            else:
                error = f"QueryCanceled: {one_line(exc)}"
        except gevent.GreenletExit as exc:
            if self.stopping.is_set():
                raise  # the drain stopping it: the job is handed back
            error = error_text(exc)  # raised by the handler itself
        except Snooze as exc:  # a plugin's subclass too
            try:
                snooze_s = seconds_of(exc)
            except ValueError as bad:
                error = str(bad)
        except Discard as exc:
            error, discarded = discard_error(exc), True
        except JobCancelled as exc:
            # Stopping cooperatively because the worker asked is a hand-back, not a failure.
            stopped = ctx.cancelled
            error = None if stopped else error_text(exc)
        except BaseException as exc:
            error = error_text(exc)
            trace = traceback.format_exc()[-TRACEBACK_CHARS:]  # only on failure: no cost else
            ctx.log.debug("handler raised", exc_info=exc)
        finally:
            entry.interrupt = None  # before anything can switch: the handler is done
            timer.close()
            misuse = self.connections.reclaim(entry.loans, ctx.log)
        if entry.cancel_requested and not returned:
            return CANCELLED  # however it ended: the handler stopped because it was asked
        if stopped:
            return STOPPED
        if misuse is not None and error is None:
            # A connection left open fails even a snooze: it is a bug to see and fix.
            return Ran(misuse)
        if snooze_s is not None:
            return Ran(snooze_s=snooze_s)
        if discarded:
            return Ran(error, discarded=True)
        if error is not None:
            return Ran(error, traceback=trace)
        if result is None:
            return RETURNED
        # Encoded here, for the handler's job alone: a value that cannot be stored fails
        # its own job (retrying would only make it again), never the batch.
        try:
            return Ran(result=encode_result(result, self.settings.max_result_bytes))
        except ResultError as exc:
            return Ran(str(exc), final=True)

    def _report(self, entry: HeldJob, outcome: Outcome, duration: float) -> None:
        """Count the outcome, log it, and call the job_finished hook."""
        ctx = entry.ctx
        if outcome.state == "released":
            ctx.log.warning("job interrupted by shutdown", duration=round(duration, 3))
        else:
            self.finished(ctx.job_type, outcome.label, duration)
        if outcome.state == "succeeded":
            # Debug: at info a JSON line per job costs as much CPU as the rest of a no-op
            # job's path; operators get the periodic "jobs finished" summary instead.
            ctx.log.debug("job succeeded", duration=duration)
        elif outcome.state == "queued":
            ctx.log.warning(
                "job retry scheduled",
                duration=duration,
                error=outcome.error,
                retry_in_ms=outcome.delay_ms,
            )
        elif outcome.state == "failed":
            ctx.log.error("job failed", duration=duration, error=outcome.error)
        elif outcome.state == "snoozed":
            # Info, not debug: the test kit reads it, and an operator wants to see a job
            # that keeps putting itself back.
            ctx.log.info("job snoozed", duration=duration, run_in_ms=outcome.delay_ms)
        elif outcome.state == "discarded":
            ctx.log.warning("job discarded", duration=duration, error=outcome.error)
        elif outcome.state == "cancelled":
            ctx.log.info("job cancelled while running", duration=duration)
        if self._hooked_finished:
            self.plugins.call(
                "job_finished",
                ctx.log,
                ctx=ctx,
                outcome=outcome.label,
                duration=duration,
                error=outcome.error,
            )
