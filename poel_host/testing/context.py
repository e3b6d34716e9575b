"""A job context for calling a handler directly in a test, its logs captured.

Calling the handler with a :class:`CapturedContext` tests its logic without the worker:
no gevent opt-in needed, and the test can set the attempt or cancel the job at will.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gevent.event
import psycopg
import structlog

from poel_host.database import connection
from poel_host.jobs import JobContext
from poel_host.queue import Queue
from poel_host.settings import Settings


@dataclass
class CapturedContext(JobContext):
    """A :class:`~poel_host.JobContext` for calling a handler directly in a test.

    Its ``log`` writes to ``logs`` (structlog event dicts: ``event``, ``log_level`` and the
    fields) instead of stderr; ``connection()`` is one transaction on the test's database,
    committed at the end of the block and rolled back on an exception, as in the worker;
    ``enqueue()`` goes through the test's :class:`~poel_host.Queue` (payloads validated);
    ``cancel()`` asks the handler to stop, as a worker shutting down does;
    ``progress(fraction, message)`` is checked as in the worker and recorded in
    ``progress_calls``; ``dependency_results()`` returns ``dependencies`` when a test set
    them (a workflow step's handler tested alone), else reads the database as the worker's.
    """

    logs: list[dict[str, Any]] = field(default_factory=list)
    progress_calls: list[tuple[float, str | None]] = field(default_factory=list)
    dependencies: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self._progress is None:
            self._progress = lambda fraction, message: self.progress_calls.append(
                (fraction, message)
            )

    def dependency_results(self) -> dict[str, Any]:
        if self.dependencies is not None:
            return dict(self.dependencies)
        return super().dependency_results()

    @property
    def events(self) -> list[str]:
        """The log messages, in order: ``assert "record processed" in ctx.events``."""
        return [str(entry.get("event")) for entry in self.logs]

    def cancel(self) -> None:
        """Set the cancellation flag that ``cancelled`` and ``check_cancelled()`` read."""
        self._cancel_event.set()

    def replace(self, **changes: Any) -> CapturedContext:
        """A copy with some fields changed (``ctx.replace(attempt=3, max_attempts=3)`` to
        test a last attempt); it logs to the same ``logs``, bound to the new values."""
        bound = {
            key: changes[name]
            for name, key in (("job_id", "jobId"), ("job_type", "jobType"), ("attempt", "attempt"))
            if name in changes
        }
        if bound and "log" not in changes:
            changes["log"] = self.log.bind(**bound)
        return dataclasses.replace(self, **changes)


def make_context(
    dsn: str,
    *,
    queue: Queue | None = None,
    settings: Settings | None = None,
    job_id: int = 1,
    job_type: str = "test",
    attempt: int = 1,
    max_attempts: int = 3,
    queue_name: str = "default",
    supabase: Any = None,
) -> CapturedContext:
    """A :class:`CapturedContext` on the database ``dsn`` (what ``poel_context`` returns).

    ``ctx.supabase`` is the process's client for ``settings``' ``SUPABASE_URL`` and
    ``SUPABASE_SERVICE_ROLE_KEY`` (a test server's, say), or ``supabase`` when given (any
    object standing in for the client)."""
    capture = structlog.testing.LogCapture()
    log = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.BoundLogger
    ).bind(jobId=job_id, jobType=job_type, attempt=attempt)

    @contextmanager
    def transaction() -> Iterator[psycopg.Connection[Any]]:
        with connection(dsn, autocommit=False) as conn:
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    return CapturedContext(
        job_id=job_id,
        job_type=job_type,
        attempt=attempt,
        max_attempts=max_attempts,
        queue=queue_name,
        enqueued_at=dt.datetime.now(dt.timezone.utc),
        log=log,
        settings=settings,
        _connection_factory=transaction,
        _enqueue=queue.enqueue if queue is not None else None,
        _cancel_event=gevent.event.Event(),
        _supabase=supabase,
        logs=capture.entries,  # type: ignore[arg-type]  # structlog's event dicts
    )
