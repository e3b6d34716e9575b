"""``run_job``'s machinery: a job enqueued, then run once through the real worker.

Running the worker's own claim, validate, run and complete path (``Worker.run_once``)
rather than calling the handler is what lets a plugin's test see what production does:
payload validation, retries with their attempts and errors, the job's logs. The worker
runs in the test process, which is why ``run_job`` needs the session's gevent opt-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from poel_host.queue import Queue
from poel_host.settings import Settings

if TYPE_CHECKING:
    from poel_host.workflows import Workflow, WorkflowState

# Rounds of run_once a workflow may take in run_job.workflow: more than any test's depth
# of steps (with their retries), few enough that a step that is never due ends the run.
WORKFLOW_ROUNDS = 1000

# The worker's log event for each outcome but success (logged at debug, which the
# captured logs may not hold): see Executor._report.
OUTCOME_EVENTS = {
    "job retry scheduled": "retry",
    "job failed": "failed",
    "job snoozed": "snoozed",
    "job discarded": "discarded",
    "job cancelled while running": "cancelled",
}


@dataclass
class JobResult:
    """What :func:`run_job` saw: the job's row after the run, the logs it wrote, and each
    ``ctx.progress(fraction, message)`` call its handler made (every call, in order, not
    only the ones the worker wrote: the worker keeps the latest)."""

    id: int
    row: dict[str, Any]
    logs: list[dict[str, Any]] = field(default_factory=list)
    progress: list[tuple[float, str | None]] = field(default_factory=list)

    @property
    def result(self) -> Any:
        """What the handler returned, as stored (JSON: a tuple comes back a list); None
        if it returned nothing or did not succeed."""
        return self.row["result"]

    @property
    def state(self) -> str:
        return str(self.row["state"])

    @property
    def error(self) -> str | None:
        return self.row["last_error"]  # type: ignore[no-any-return]

    @property
    def outcome(self) -> str:
        """What the run amounted to, as the ``job_finished`` hook says it: ``succeeded``,
        ``retry``, ``failed``, ``snoozed`` or ``discarded`` (the last two leave the row
        ``queued`` and ``failed``: ``state`` alone cannot tell them from a retry and a
        failure)."""
        for entry in self.logs:
            outcome = OUTCOME_EVENTS.get(str(entry.get("event")))
            if outcome is not None:
                return outcome
        return self.state


@dataclass
class WorkflowRun:
    """What :meth:`JobRunner.workflow` saw: the workflow as :meth:`Queue.workflow` reads it
    at the end, and each step's :class:`JobResult` by step name (a step cancelled before
    it ran has its row and no logs)."""

    workflow: WorkflowState
    steps: dict[str, JobResult]

    @property
    def state(self) -> str:
        return self.workflow.state


class JobRunner:
    """What the ``run_job`` fixture returns: runs jobs through the real worker, once each.

    ``run_job(type, payload, **enqueue_options)`` enqueues one job (options as for
    :meth:`poel_host.Queue.enqueue`, e.g. ``max_attempts=1``) and runs what is due once
    through the worker's claim, validate, run and complete path. A retry is queued with a
    backoff and not run; ``run_job.retry(job_id)`` makes it due now and runs its next
    attempt, so a test walks a job through its attempts without sleeping.
    """

    def __init__(self, worker: Any, queue: Queue, settings: Settings) -> None:
        self.worker = worker
        self.queue = queue
        self.settings = settings

    def __call__(self, job_type: str, payload: Any = None, **options: Any) -> JobResult:
        job_id = self.queue.enqueue(job_type, payload, **options)
        return self._run(job_id)

    def retry(self, job_id: int) -> JobResult:
        """Run the next attempt of a job waiting to be retried (state ``queued``)."""
        self.worker.open()
        made_due = self.worker.store.make_due(job_id)
        assert made_due, f"job {job_id} is not queued, so it has no next attempt"
        return self._run(job_id)

    def workflow(self, workflow: Workflow, *, retries: bool = True) -> WorkflowRun:
        """Enqueue ``workflow`` and run its steps through the worker, round after round,
        each step once its dependencies allow, until none is due. A step's retry runs at
        once, its backoff skipped (``retries=False``: the run stops with the step queued
        for it, as ``run_job`` leaves a job)."""
        workflow_id = self.queue.enqueue_workflow(workflow)
        with self._watching() as seen:
            for _ in range(WORKFLOW_ROUNDS):
                if self.worker.run_once():
                    continue
                state = self.queue.workflow(workflow_id)
                assert state is not None
                retrying = [s.job_id for s in state.steps if s.state == "queued"]
                if not (retries and retrying):
                    break
                for job_id in retrying:
                    self.worker.store.make_due(job_id)
        state = self.queue.workflow(workflow_id)
        assert state is not None
        steps = {step.name: self._result(step.job_id, *seen) for step in state.steps}
        return WorkflowRun(state, steps)

    def _run(self, job_id: int) -> JobResult:
        with self._watching() as seen:
            ran = self.worker.run_once()
        assert job_id in ran, f"job {job_id} was not claimed (is it due? is its plugin loaded?)"
        return self._result(job_id, *seen)

    @contextlib.contextmanager
    def _watching(self) -> Iterator[tuple[list[Any], list[tuple[int, float, str | None]]]]:
        """The log events and every ``ctx.progress`` call (job, fraction, message) of
        what runs inside."""
        calls: list[tuple[int, float, str | None]] = []
        board = self.worker.progress
        board.watch = lambda job, fraction, message: calls.append((job, fraction, message))
        try:
            with structlog.testing.capture_logs() as logs:
                yield logs, calls
        finally:
            board.watch = None

    def _result(
        self, job_id: int, logs: list[Any], calls: list[tuple[int, float, str | None]]
    ) -> JobResult:
        row = self.worker.store.get_job(job_id)  # through the worker's own queue pool
        assert row is not None
        own = [dict(entry) for entry in logs if entry.get("jobId") == job_id]
        progress = [(fraction, message) for job, fraction, message in calls if job == job_id]
        return JobResult(job_id, row, own, progress)
