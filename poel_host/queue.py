"""Enqueueing jobs from Python: :class:`Queue`.

A web application imports ``poel_host.Queue`` to enqueue; this module patches nothing.
Pass ``connection=`` to enqueue inside your own psycopg transaction (the job becomes
visible when you commit, and disappears if you roll back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from poel_host import payloads
from poel_host.database import KeptConnection
from poel_host.errors import DuplicateJob, InvalidPayload, UnknownJobType
from poel_host.job_requests import JobRequest, check_request, delay_ms
from poel_host.job_steering import job_key
from poel_host.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Job
from poel_host.pauses import Pausing
from poel_host.steering import Steering
from poel_host.store import Store
from poel_host.workflow_control import WorkflowControl

if TYPE_CHECKING:
    from poel_host.settings import Settings
    from poel_host.workflows import Workflow, WorkflowState


class Queue(Pausing, Steering, WorkflowControl):
    """Enqueue jobs into Poel's table; pause, resume and steer a queue or a job type;
    cancel or retry a workflow whole.

    :param dsn: the database URL (``DATABASE_URL``).
    :param schema: Poel's schema (``POEL_SCHEMA``).
    :param jobs: job types to validate payloads against; by default the installed plugins'
        (loaded on first use). Pass ``{}`` to skip plugin loading.
    :param allow_unknown: accept job types no local plugin defines (a producer that does
        not install the handlers); their payloads are stored unvalidated.
    :param pooler: ``"transaction"`` when ``dsn`` is a transaction pooler (PgBouncer,
        Supabase's port 6543): no server-side prepared statements (``POEL_POOLER``).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "poel",
        jobs: Mapping[str, Job] | None = None,
        allow_unknown: bool = False,
        max_payload_bytes: int = 1_000_000,
        pooler: str = "none",
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.allow_unknown = allow_unknown
        self.max_payload_bytes = max_payload_bytes
        self._jobs = dict(jobs) if jobs is not None else None
        self._conn = KeptConnection(dsn, pooler=pooler)
        self._store = Store(schema, self._conn)

    @classmethod
    def for_settings(cls, settings: Settings, jobs: Mapping[str, Job]) -> Queue:
        """A Queue as ``settings`` configure one (URL, schema, payload limit, pooler)."""
        return cls(
            settings.dsn,
            schema=settings.schema_name,
            jobs=jobs,
            max_payload_bytes=settings.max_payload_bytes,
            pooler=settings.pooler,
        )

    @property
    def jobs(self) -> dict[str, Job]:
        if self._jobs is None:
            from poel_host.plugins import load_plugins

            self._jobs = load_plugins().jobs
        return self._jobs

    def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        run_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        unique_key: str | None = None,
        key: str | None = None,
        connection: psycopg.Connection[Any] | None = None,
        allow_unknown: bool | None = None,
    ) -> int:
        """Store one job and return its id.

        Raises InvalidPayload (with pydantic's message), UnknownJobType, or DuplicateJob
        when a live job has the same ``unique_key``.
        """
        request = JobRequest(
            job_type, payload, run_at, delay, priority, queue, max_attempts, unique_key, key
        )
        ids = self._insert([request], connection=connection, allow_unknown=allow_unknown)
        if ids[0] is None:
            existing = self._existing(job_type, unique_key or "", connection)
            raise DuplicateJob(job_type, unique_key or "", existing)
        return ids[0]

    def enqueue_many(
        self,
        requests: Iterable[JobRequest],
        *,
        connection: psycopg.Connection[Any] | None = None,
        allow_unknown: bool | None = None,
    ) -> list[int | None]:
        """Store many jobs in one statement. Returns their ids in order; ``None`` for a job
        skipped because a live job holds its ``unique_key``. Nothing is stored if any payload
        is invalid."""
        return self._insert(list(requests), connection=connection, allow_unknown=allow_unknown)

    def _insert(
        self,
        requests: Sequence[JobRequest],
        *,
        connection: psycopg.Connection[Any] | None,
        allow_unknown: bool | None,
    ) -> list[int | None]:
        if not requests:
            return []
        params = self._params(
            requests, self.allow_unknown if allow_unknown is None else allow_unknown
        )
        ids = self._store.enqueue_jobs(params, connection)
        assert len(ids) == len(requests), "enqueue_jobs answers one row per request"
        return ids

    def _params(self, requests: Sequence[JobRequest], allow_unknown: bool) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {
            key: []
            for key in (
                "job_types",
                "payloads",
                "run_ats",
                "delays_ms",
                "priorities",
                "queues",
                "max_attempts",
                "unique_keys",
                "keys",
            )
        }
        for request in requests:
            check_request(request)
            job = self._job(request.type, allow_unknown)
            body = payloads.to_object(request.type, request.payload)
            if job is not None:
                payloads.validate(job, body)
            columns["job_types"].append(request.type)
            columns["payloads"].append(
                payloads.encode(request.type, body, max_bytes=self.max_payload_bytes)
            )
            columns["run_ats"].append(request.run_at)
            columns["delays_ms"].append(delay_ms(request.type, request.delay))
            columns["priorities"].append(
                request.priority if request.priority is not None else (job.priority if job else 0)
            )
            columns["queues"].append(request.queue or (job.queue if job else DEFAULT_QUEUE))
            attempts = request.max_attempts
            if attempts is None:
                attempts = job.max_attempts if job else DEFAULT_MAX_ATTEMPTS
            columns["max_attempts"].append(attempts)
            columns["unique_keys"].append(request.unique_key)
            columns["keys"].append(request.key if request.key is not None else job_key(job, body))
        return columns

    def _job(self, job_type: str, allow_unknown: bool) -> Job | None:
        job = self.jobs.get(job_type)
        if job is None and not allow_unknown:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UnknownJobType(
                f"no installed plugin handles job type {job_type!r} (known: {known}); install "
                "its plugin, or pass allow_unknown=True (CLI: --allow-unknown) to enqueue it "
                "without validation"
            )
        return job

    def _existing(
        self, job_type: str, unique_key: str, connection: psycopg.Connection[Any] | None
    ) -> int | None:
        return self._store.find_live_unique(job_type, unique_key, connection)

    def enqueue_workflow(
        self,
        workflow: Workflow,
        *,
        connection: psycopg.Connection[Any] | None = None,
        allow_unknown: bool | None = None,
    ) -> int:
        """Store a :class:`~poel_host.workflows.Workflow` whole, in one statement (inside
        your transaction with ``connection=``), and return its id. Each step's payload and
        options are checked as :meth:`enqueue` checks a job's; nothing is stored if any
        is refused (InvalidPayload, UnknownJobType, naming the step) or if the database
        refuses the workflow (InvalidWorkflow: a live job holds a step's unique_key)."""
        from poel_host.workflows import workflow_columns

        allow = self.allow_unknown if allow_unknown is None else allow_unknown
        columns: dict[str, list[Any]] = {}
        for step in workflow.steps:
            try:
                one = self._params([step.request], allow)
            except (InvalidPayload, UnknownJobType) as exc:
                where = f"workflow {workflow.name!r}, step {step.name!r}: {exc}"
                if isinstance(exc, InvalidPayload):
                    raise InvalidPayload(where, job_type=exc.job_type) from exc
                raise UnknownJobType(where) from exc
            for name, values in one.items():
                columns.setdefault(name, []).extend(values)
        params = workflow_columns(workflow, columns)
        return self._store.enqueue_workflow(workflow.name, params, connection)

    def workflow(self, workflow_id: int) -> WorkflowState | None:
        """The workflow's state (``running``, ``succeeded``, ``failed`` naming the step
        that failed and why, ``cancelled``) and each step's state (``waiting`` while its
        dependencies have not ended), attempts, error and duration; None if there is no
        such workflow (never enqueued, or deleted past its retention)."""
        from poel_host.workflows import read_workflow

        return read_workflow(self._store, workflow_id)

    def get(self, job_id: int) -> dict[str, Any] | None:
        """The job as stored (its state, attempts, errors, timings, payload, ``result``,
        ``progress`` and ``progress_message``), live or finished: in the jobs table or,
        once archived, in the history. None if there is no such job (never enqueued, or
        deleted past its retention)."""
        return self._store.get_job(job_id)

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result: its handler's return value
        (None if it returned nothing). Waits on a notification the workers send when they
        write outcomes (LISTEN, on a connection of its own), not by polling.

        :param timeout: seconds to wait at most; None waits as long as it takes.
        :raises poel_host.errors.JobFailed: the job failed or was cancelled; ``errors`` is
            its error history.
        :raises poel_host.errors.JobNotFound: no job has this id.
        :raises poel_host.errors.ResultTimeout: a ``TimeoutError``, naming the job and
            its state, when ``timeout`` passed first.
        """
        from poel_host.result_wait import wait_for_result

        return wait_for_result(
            self._store, self.dsn, job_id, timeout=timeout, pooler=self._conn.pooler
        )

    def cancel(self, job_id: int) -> bool:
        """Cancel a job: a queued one is ``cancelled`` at once; a running one is asked to
        stop, and the worker holding it stops its handler within about a second (it then
        ends ``cancelled``, not retried; one that returned first ``succeeded``). False if
        the job is finished or unknown."""
        return self._store.cancel_job(job_id) is not None

    def retry(self, job_id: int) -> bool:
        """Queue a failed or cancelled job again with fresh attempts, in the jobs table or
        moved back from the history; False if it is not failed or cancelled. A workflow's
        step runs now (whatever its dependencies did) and its workflow waits for it again;
        the steps its failure cancelled stay cancelled (:meth:`retry_workflow` runs them)."""
        return self._store.retry_job(job_id)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
