"""Enqueueing jobs from Python: :class:`Queue`.

A web application imports ``poel_host.Queue`` to enqueue; this module patches nothing.
Pass ``connection=`` to enqueue inside your own psycopg transaction (the job becomes
visible when you commit, and disappears if you roll back).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from poel_host import payloads
from poel_host.database import KeptConnection
from poel_host.errors import DuplicateJob, InvalidPayload, UnknownJobType
from poel_host.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JOB_TYPE, Job
from poel_host.pauses import Pausing
from poel_host.storable import INT4_MAX
from poel_host.store import Store

if TYPE_CHECKING:
    from poel_host.settings import Settings


@dataclass
class JobRequest:
    """One job to enqueue with :meth:`Queue.enqueue_many`."""

    type: str
    payload: Any = None
    run_at: dt.datetime | None = None
    delay: float | dt.timedelta | None = None
    priority: int | None = None
    queue: str | None = None
    max_attempts: int | None = None
    unique_key: str | None = None


class Queue(Pausing):
    """Enqueue jobs into Poel's table; pause and resume a queue or a job type.

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
        connection: psycopg.Connection[Any] | None = None,
        allow_unknown: bool | None = None,
    ) -> int:
        """Store one job and return its id.

        Raises InvalidPayload (with pydantic's message), UnknownJobType, or DuplicateJob
        when a live job has the same ``unique_key``.
        """
        request = JobRequest(
            job_type, payload, run_at, delay, priority, queue, max_attempts, unique_key
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
            )
        }
        for request in requests:
            _check_request(request)
            job = self._job(request.type, allow_unknown)
            body = payloads.to_object(request.type, request.payload)
            if job is not None:
                payloads.validate(job, body)
            columns["job_types"].append(request.type)
            columns["payloads"].append(
                payloads.encode(request.type, body, max_bytes=self.max_payload_bytes)
            )
            columns["run_ats"].append(request.run_at)
            columns["delays_ms"].append(_delay_ms(request.type, request.delay))
            columns["priorities"].append(
                request.priority if request.priority is not None else (job.priority if job else 0)
            )
            columns["queues"].append(request.queue or (job.queue if job else DEFAULT_QUEUE))
            attempts = request.max_attempts
            if attempts is None:
                attempts = job.max_attempts if job else DEFAULT_MAX_ATTEMPTS
            columns["max_attempts"].append(attempts)
            columns["unique_keys"].append(request.unique_key)
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
        moved back from the history; False if it is not failed or cancelled."""
        return self._store.retry_job(job_id)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delay_ms(job_type: str, delay: float | dt.timedelta | None) -> int:
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    if seconds < 0:
        raise InvalidPayload(f"delay must not be negative, got {seconds:g}s", job_type=job_type)
    return int(seconds * 1000)


MAX_DELAY_S = 100 * 366 * 86400
MAX_NAME_CHARS = 200
MAX_UNIQUE_KEY_CHARS = 1000  # the live-unique index holds it: btree rows stop near 2.7 kB


def _check_request(request: JobRequest) -> None:
    """Refuse arguments PostgreSQL would reject with a driver error (a NUL byte, a number
    out of range) or quietly reinterpret (a run_at of 'tomorrow', a priority of True),
    before anything is sent. Each refusal is an InvalidPayload naming the argument."""
    job_type = request.type
    if not isinstance(job_type, str) or not JOB_TYPE.fullmatch(job_type):
        raise InvalidPayload(
            f"job type {_show(job_type)} is not a valid name: 1-{MAX_NAME_CHARS} letters, "
            "digits and _ . : - (not starting with . : -)",
            job_type=_show(job_type),
        )

    def refuse(problem: str) -> InvalidPayload:
        return InvalidPayload(f"cannot enqueue {job_type!r}: {problem}", job_type=job_type)

    for name, value, low in (
        ("priority", request.priority, -INT4_MAX - 1),
        ("max_attempts", request.max_attempts, 1),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"{name} must be an integer, got {_show(value)}")
        if value < low:
            raise refuse(f"{name} must be at least {low}")
        if value > INT4_MAX:
            raise refuse(f"{name} must be at most {INT4_MAX}")
    for name, text, limit in (
        ("queue", request.queue, MAX_NAME_CHARS),
        ("unique_key", request.unique_key, MAX_UNIQUE_KEY_CHARS),
    ):
        if problem := payloads.optional_text_problem(name, text, limit):
            raise refuse(problem)
    if request.run_at is not None and not isinstance(request.run_at, dt.datetime):
        raise refuse(f"run_at must be a datetime, got {_show(request.run_at)}")
    delay = request.delay
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float | dt.timedelta):
            raise refuse(f"delay must be seconds or a timedelta, got {_show(delay)}")
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
        if not math.isfinite(seconds) or seconds > MAX_DELAY_S:
            raise refuse(f"delay must be at most 100 years, got {_show(delay)}")


_show = payloads.shown
