"""Poel's pytest plugin: fixtures to test job handlers against a real PostgreSQL.

Installed with poel-host and registered through the ``pytest11`` entry point, so a plugin
author's tests just use the fixtures::

    def test_process(run_job):
        result = run_job("process_new_record", {"record_id": 1})
        assert result.state == "succeeded"

Fixtures: ``poel_dsn`` (a fresh migrated database), ``poel_settings``, ``poel_queue``,
``poel_conn`` (autocommit, dict rows), ``run_job`` (enqueue and run through the worker;
``run_job.retry(job_id)`` runs a retry's next attempt at once), ``poel_context`` (a
:class:`CapturedContext` to call a handler directly, its logs captured), ``enqueued``
and ``assert_enqueued`` (what is in the jobs table), ``poel_plugins``.

The server is found through ``POEL_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). A template database is migrated once
per test session (host and loaded plugins' migrations); each test that asks for
``poel_dsn`` gets a fresh copy of it, dropped afterwards.

This module patches the standard library for gevent when pytest loads it, the earliest
point a test session reaches, so that psycopg is green in tests that run the worker
in-process, as it is under ``poel-host serve``.
"""

from __future__ import annotations

from poel_host.green import patch

patch()

import dataclasses  # noqa: E402 - patching must come first
import datetime as dt  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

import gevent.event  # noqa: E402
import psycopg  # noqa: E402
import pytest  # noqa: E402
import structlog  # noqa: E402
from psycopg import sql  # noqa: E402

from poel_host import migrations  # noqa: E402
from poel_host.database import connection  # noqa: E402
from poel_host.jobs import JobContext  # noqa: E402
from poel_host.plugins import Plugins, load_plugins  # noqa: E402
from poel_host.queue import Queue  # noqa: E402
from poel_host.settings import Settings  # noqa: E402

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
_counter = itertools.count(1)


def server_dsn() -> str:
    return os.environ.get("POEL_TEST_DATABASE_URL", DEFAULT_SERVER)


def dsn_for(database: str, base: str | None = None) -> str:
    """``base`` (the test server's URL) pointing at another database."""
    parts = urlsplit(base or server_dsn())
    return urlunsplit(parts._replace(path="/" + database))


def create_database(name: str, *, template: str | None = None) -> None:
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def drop_database(name: str) -> None:
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


@pytest.fixture(scope="session")
def poel_plugins() -> Plugins:
    """The installed plugins, as ``poel-host serve`` would load them (POEL_LOAD_PLUGINS)."""
    settings = Settings()
    return load_plugins(settings.plugins_to_load, settings.plugins_disabled)


@pytest.fixture(scope="session")
def poel_template(poel_plugins: Plugins) -> Iterator[str]:
    """A database migrated with the host's and the plugins' migrations, used as template."""
    name = f"poel_tpl_{os.getpid()}"
    create_database(name)
    with connection(dsn_for(name)) as conn:
        migrations.migrate(conn, "poel", poel_plugins.migrations())
    yield name
    drop_database(name)


@pytest.fixture
def poel_dsn(poel_template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, migrated database for this test (dropped afterwards)."""
    name = f"poel_t_{os.getpid()}_{next(_counter)}"
    create_database(name, template=poel_template)
    yield dsn_for(name)
    drop_database(name)


@pytest.fixture
def poel_settings(poel_dsn: str) -> Settings:
    """Settings for the fresh database, with quick polling and retries for tests."""
    overrides: dict[str, Any] = {
        "DATABASE_URL": poel_dsn,
        "POEL_POLL_INTERVAL_MS": 50,
        "POEL_RETRY_BACKOFF_MS": 10,
        "HEALTH_CHECK_PORT": 0,
    }
    return Settings(**overrides)


@pytest.fixture
def poel_queue(poel_dsn: str, poel_plugins: Plugins) -> Iterator[Queue]:
    """A :class:`~poel_host.Queue` on the fresh database, validating with the plugins."""
    with Queue(poel_dsn, jobs=poel_plugins.jobs) as queue:
        yield queue


@pytest.fixture
def poel_conn(poel_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (dict rows) to the fresh database, for assertions."""
    with connection(poel_dsn) as conn:
        yield conn


@dataclass
class JobResult:
    """What :func:`run_job` saw: the job's row after the run, and the logs it wrote."""

    id: int
    row: dict[str, Any]
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        return str(self.row["state"])

    @property
    def error(self) -> str | None:
        return self.row["last_error"]  # type: ignore[no-any-return]


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
        made_due = self._store().make_due(job_id)
        assert made_due, f"job {job_id} is not queued, so it has no next attempt"
        return self._run(job_id)

    def _store(self) -> Any:
        from poel_host.store import Store

        return Store(self.settings.schema_name, self._conn)

    @functools.cached_property
    def _conn(self) -> Any:
        from poel_host.database import KeptConnection

        return KeptConnection(self.settings.dsn, name="kit")

    def close(self) -> None:
        if "_conn" in self.__dict__:
            self._conn.close()

    def _run(self, job_id: int) -> JobResult:
        with structlog.testing.capture_logs() as logs:
            ran = self.worker.run_once()
        assert job_id in ran, f"job {job_id} was not claimed (is it due? is its plugin loaded?)"
        row = self._store().get_job(job_id)
        assert row is not None
        own = [dict(entry) for entry in logs if entry.get("jobId") == job_id]
        return JobResult(job_id, row, own)


@pytest.fixture
def run_job(
    poel_settings: Settings, poel_plugins: Plugins, poel_queue: Queue
) -> Iterator[JobRunner]:
    """``run_job(type, payload, **enqueue_options)``: enqueue one job and run it once
    through the real claim, validate, run and complete path of the worker; returns a
    :class:`JobResult` (the job's row and its logs). ``run_job.retry(job_id)`` runs the
    next attempt of a job queued for a retry, without waiting for its backoff."""
    from poel_host.logs import get_logger
    from poel_host.worker import Worker

    worker = Worker(poel_settings, poel_plugins, log=get_logger())
    runner = JobRunner(worker, poel_queue, poel_settings)
    yield runner
    runner.close()
    worker.close()


@dataclass
class CapturedContext(JobContext):
    """A :class:`~poel_host.JobContext` for calling a handler directly in a test.

    Its ``log`` writes to ``logs`` (structlog event dicts: ``event``, ``log_level`` and the
    fields) instead of stderr; ``connection()`` is one transaction on the test's database,
    committed at the end of the block and rolled back on an exception, as in the worker;
    ``enqueue()`` goes through the test's :class:`~poel_host.Queue` (payloads validated);
    ``cancel()`` asks the handler to stop, as a worker shutting down does.
    """

    logs: list[dict[str, Any]] = field(default_factory=list)

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
) -> CapturedContext:
    """A :class:`CapturedContext` on the database ``dsn`` (what ``poel_context`` returns)."""
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
        logs=capture.entries,  # type: ignore[arg-type]  # structlog's event dicts
    )


@pytest.fixture
def poel_context(poel_settings: Settings, poel_queue: Queue) -> CapturedContext:
    """A :class:`CapturedContext` on the fresh database, to call a handler directly::

    def test_handler(poel_context):
        process(NewRecord(record_id=1), poel_context)
        assert "record processed" in poel_context.events
    """
    return make_context(poel_settings.dsn, queue=poel_queue, settings=poel_settings)


@pytest.fixture
def enqueued(poel_settings: Settings) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """``enqueued(job_type=None, state=None)``: the jobs in the table, oldest first, to
    assert on what a handler (or the code under test) enqueued."""
    from poel_host.database import KeptConnection
    from poel_host.store import Store

    conn = KeptConnection(poel_settings.dsn, name="kit")
    store = Store(poel_settings.schema_name, conn)

    def jobs(job_type: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return store.find_jobs(job_type=job_type, state=state)

    yield jobs
    conn.close()


@pytest.fixture
def assert_enqueued(
    enqueued: Callable[..., list[dict[str, Any]]],
) -> Callable[..., list[dict[str, Any]]]:
    """``assert_enqueued(job_type, payload=None, *, count=None, state=None)``: assert that
    jobs of ``job_type`` are in the table whose payload contains ``payload``'s keys with
    the same values (any payload if None): exactly ``count`` of them when given (``0``
    asserts there are none), at least one otherwise. Returns the matching rows. The failure
    message lists the jobs that are there, so a wrong payload is plain to see."""

    def check(
        job_type: str,
        payload: dict[str, Any] | None = None,
        *,
        count: int | None = None,
        state: str | None = None,
    ) -> list[dict[str, Any]]:
        rows = enqueued(job_type, state)
        wanted = payload or {}
        matching = [
            row
            for row in rows
            if all(key in row["payload"] and row["payload"][key] == v for key, v in wanted.items())
        ]
        ok = len(matching) == count if count is not None else bool(matching)
        if not ok:
            expected = f"exactly {count}" if count is not None else "at least one"
            seen = "\n".join(
                f"  job {row['id']} ({row['state']}): {row['payload']}" for row in rows
            )
            raise AssertionError(
                f"expected {expected} {job_type!r} job(s)"
                + (f" with payload including {wanted}" if wanted else "")
                + (f" in state {state!r}" if state else "")
                + f", found {len(matching)}; {job_type!r} jobs enqueued:\n"
                + (seen or "  (none)")
            )
        return matching

    return check
