"""What a plugin declares (:class:`Job`) and what a handler receives (:class:`JobContext`).

This module imports no database code at import time: a plugin module that imports ``Job``
stays cheap to import and can be loaded by a producer that only validates payloads.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from pydantic import BaseModel

from poel_host.job_steering import steering_problems
from poel_host.results import check_progress

if TYPE_CHECKING:
    import psycopg
    from supabase import Client as SupabaseClient

    from poel_host.settings import Settings

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")

# A job's defaults when neither its plugin nor its producer says otherwise (the SQL
# function and the table's column defaults in sql/migrations/0001_jobs.sql agree).
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
# Snoozes a job may take before it fails (Job(max_snoozes=...)): a handler that snoozes
# for ever, by a bug or waiting for what never comes, ends in the dead letter where someone
# sees it, instead of being run for ever without an attempt counted.
DEFAULT_MAX_SNOOZES = 100

Executor = Literal["greenlet", "thread", "process"]
EXECUTORS: tuple[Executor, ...] = ("greenlet", "thread", "process")

Backoff = float | Callable[[int], float]
JOB_TYPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")  # fullmatch: a job type name


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.check_cancelled` once the worker asked the job to stop."""


@dataclass(frozen=True)
class Job:
    """A job type a plugin handles.

    :param type: the name producers enqueue (``"process_new_record"``); unique across plugins.
    :param schema: the pydantic model the payload is validated into before the handler runs.
    :param handler: ``handler(payload, ctx)``, a plain blocking-style function (its I/O
        cooperates under gevent). Its return value, if not None, is kept as the job's
        result (JSON; see ``Queue.result``).
    :param queue: the queue new jobs of this type go to unless the producer says otherwise.
    :param max_attempts: attempts before the job is ``failed`` (the dead letter).
    :param timeout: seconds a run may take; overrides ``JOB_TIMEOUT_MS``.
    :param backoff: base retry delay in seconds (doubled each attempt, with jitter), or a
        function ``attempt -> seconds``; default ``POEL_RETRY_BACKOFF_MS``.
    :param schedule: a cron expression: the host enqueues the job once per slot.
    :param priority: default priority of new jobs (higher runs first).
    :param executor: where the handler runs: ``"greenlet"`` (default; I/O-bound work, on
        the serve process's event loop), ``"thread"`` (a real OS thread, for native code
        that releases the GIL) or ``"process"`` (a child process of ``serve``, for
        CPU-heavy Python: minutes of CPU without starving the worker).
    :param max_snoozes: times a job may snooze (``ctx.snooze``); one more fails it.
        ``None``: no bound (a job that polls for as long as it takes).

    Steering, enforced by the database across every worker (see the README's "Steering"):

    :param concurrency: at most this many slots of the type running at once, fleet-wide
        (per key with ``per_key``); each job takes ``weight`` slots.
    :param weight: slots one job takes of its type's and its queue's limits.
    :param rate: at most this many starts in any window of ``per`` seconds.
    :param key: the payload field whose value is a job's key (a tenant, a record), unless
        its producer passes ``key=``.
    :param per_key: ``concurrency`` and ``rate`` hold for each key apart.
    :param fair: claim the keys in weighted turn (``key_weights``: key -> weight, 1 for
        any other), so one key's backlog does not hold back another's jobs.
    """

    type: str
    schema: builtins.type[BaseModel]
    handler: Callable[[Any, JobContext], object]
    queue: str = DEFAULT_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    backoff: Backoff | None = None
    schedule: str | None = None
    priority: int = 0
    executor: Executor = "greenlet"
    max_snoozes: int | None = DEFAULT_MAX_SNOOZES
    concurrency: int | None = None
    weight: int = 1
    rate: int | None = None
    per: float = 1.0
    key: str | None = None
    per_key: bool = False
    fair: bool = False
    key_weights: dict[str, int] | None = field(default=None, hash=False)  # a dict: unhashable

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.type, str) or not JOB_TYPE.fullmatch(self.type):
            problems.append(
                f"type {self.type!r} must be 1-200 characters of letters, digits and _ . : -"
            )
        if not (isinstance(self.schema, type) and issubclass(self.schema, BaseModel)):
            problems.append(f"schema must be a pydantic BaseModel subclass, got {self.schema!r}")
        if not callable(self.handler):
            problems.append(f"handler must be callable, got {self.handler!r}")
        if not isinstance(self.queue, str) or not self.queue:
            problems.append("queue must be a non-empty string")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            problems.append(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.timeout is not None and not (
            isinstance(self.timeout, int | float) and self.timeout > 0
        ):
            problems.append(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if (
            self.backoff is not None
            and not callable(self.backoff)
            and (not isinstance(self.backoff, int | float) or self.backoff < 0)
        ):
            problems.append("backoff must be seconds >= 0 or a function attempt -> seconds")
        if self.max_snoozes is not None and (
            not isinstance(self.max_snoozes, int)
            or isinstance(self.max_snoozes, bool)
            or self.max_snoozes < 0
        ):
            problems.append(
                f"max_snoozes must be an integer >= 0 or None, got {self.max_snoozes!r}"
            )
        problems.extend(steering_problems(self))
        if self.executor not in EXECUTORS:
            problems.append(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.schedule is not None:
            from poel_host.schedules import validate_cron

            error = validate_cron(self.schedule)
            if error:
                problems.append(
                    f"schedule {self.schedule!r} is not a valid cron expression: {error}"
                )
            elif refusal := self._accepts_empty_payload():
                problems.append(refusal)
        if problems:
            raise ValueError(f"invalid Job {self.type!r}: " + "; ".join(problems))

    def _accepts_empty_payload(self) -> str | None:
        """Scheduled jobs are enqueued with ``{}``: their model must accept it."""
        if not (isinstance(self.schema, type) and issubclass(self.schema, BaseModel)):
            return None
        try:
            self.schema.model_validate({})
        except ValueError as exc:
            return f"a scheduled job's payload model must accept {{}} ({exc.__class__.__name__})"
        return None

    def timeout_seconds(self, default_ms: int) -> float:
        return self.timeout if self.timeout is not None else default_ms / 1000

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.schema.model_json_schema()
        return schema


@dataclass
class JobContext:
    """What a handler gets besides its payload.

    ``log`` is a structlog logger bound to ``jobId``, ``jobType`` and ``attempt``.
    ``connection()`` lends a pooled, green psycopg connection: the block is one
    transaction, committed when it ends and rolled back on an exception. ``enqueue()``
    queues a follow-up job (pass ``connection=conn`` to make it part of your transaction).
    ``supabase`` is the process's supabase-py client for ``SUPABASE_URL`` and
    ``SUPABASE_SERVICE_ROLE_KEY``, made on first use (see :mod:`poel_host.supabase_client`).
    ``progress(fraction, message)`` reports how far the job got. ``dependency_results()``
    reads the results of the workflow steps a step waits for.
    """

    job_id: int
    job_type: str
    attempt: int
    max_attempts: int
    queue: str
    enqueued_at: dt.datetime
    log: Any
    settings: Settings | None = None
    snoozes: int = 0  # times this job snoozed before this run (attempt does not count them)
    _connection_factory: Callable[[], Any] | None = field(default=None, repr=False)
    _enqueue: Callable[..., int] | None = field(default=None, repr=False)
    _cancel_event: Any = field(default=None, repr=False)
    _supabase: Any = field(default=None, repr=False)  # a client given instead (the test kit)
    _progress: Callable[[float, str | None], None] | None = field(default=None, repr=False)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for the duration of the block (one transaction)."""
        if self._connection_factory is None:
            raise RuntimeError("this JobContext has no database connection pool")
        with self._connection_factory() as conn:
            yield conn

    @property
    def supabase(self) -> SupabaseClient:
        """The official supabase-py client, acting as the service role: one per process,
        made on first use, shared by every job of the process, its I/O green under gevent.

        :raises poel_host.supabase_client.SupabaseNotConfigured: naming ``SUPABASE_URL`` or
            ``SUPABASE_SERVICE_ROLE_KEY`` when they are not set (the job fails saying so).
        """
        if self._supabase is not None:
            return self._supabase  # type: ignore[no-any-return]
        from poel_host.supabase_client import client_for

        return client_for(self.settings)

    def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        """Enqueue a follow-up job; same options as :meth:`poel_host.Queue.enqueue`."""
        if self._enqueue is None:
            raise RuntimeError("this JobContext cannot enqueue")
        return self._enqueue(job_type, payload, **options)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job got: ``fraction`` from 0 to 1, and an optional message.

        Call it as often as you like: only the latest report is kept, and the worker
        writes it about once a second (shown by ``Queue.get``, ``poel-host jobs show`` and
        the dashboard). A report made after the attempt was lost (rescued, timed out) is
        written nowhere. A NUL character in ``message`` is stored as ``\\x00``, and the
        message is cut to 1,000 characters.

        :raises ValueError: ``fraction`` is not a number from 0 to 1, or ``message`` is not
            a string or None.
        """
        value, text = check_progress(fraction, message)
        if self._progress is not None:
            self._progress(value, text)

    def dependency_results(self) -> dict[str, Any]:
        """The results of the workflow steps this step waits for, by step name: what each
        one's handler returned (None if nothing), read from the database (live or
        archived) on each call, in every executor. A dependency that failed or was
        cancelled (a step that runs anyway) is left out; a job outside a workflow gets {}.
        """
        from poel_host.store import Store

        schema = self.settings.schema_name if self.settings is not None else "poel"
        with self.connection() as conn:
            return Store(schema).dependency_results(self.job_id, conn)

    @property
    def cancelled(self) -> bool:
        """True once the worker asked this job to stop (shutdown past its grace period)."""
        return self._cancel_event is not None and self._cancel_event.is_set()

    def snooze(self, seconds: float) -> NoReturn:
        """Put the job back to run ``seconds`` from now, this attempt not counted: raises
        :class:`~poel_host.Snooze`, so nothing after it runs. ``seconds`` must be finite,
        from 0 to a year (else ``ValueError``: the attempt fails as any error)."""
        from poel_host.snooze_discard import Snooze

        raise Snooze(seconds)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was asked to stop; call it between steps."""
        if self.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled by the worker")

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation; True if cancelled."""
        if self._cancel_event is None:
            import time

            time.sleep(timeout)
            return False
        return bool(self._cancel_event.wait(timeout))
