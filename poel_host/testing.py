"""Poel's pytest plugin: fixtures to test job handlers against a real PostgreSQL.

Installed with poel-host and registered through the ``pytest11`` entry point, so a plugin
author's tests just use the fixtures::

    def test_process(run_job):
        result = run_job("process_new_record", {"record_id": 1})
        assert result.state == "succeeded"

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

import itertools  # noqa: E402 - patching must come first
import os  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit, urlunsplit  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
import structlog  # noqa: E402
from psycopg import sql  # noqa: E402

from poel_host import migrations  # noqa: E402
from poel_host.database import connection  # noqa: E402
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


@pytest.fixture
def run_job(
    poel_settings: Settings, poel_plugins: Plugins, poel_queue: Queue
) -> Iterator[Callable[..., JobResult]]:
    """``run_job(type, payload, **enqueue_options)``: enqueue one job and run it once
    through the real claim, validate, run and complete path of the worker. Retries are not
    run (call ``run_due()`` after the delay, or pass ``max_attempts=1``)."""
    from poel_host.logs import get_logger
    from poel_host.queries import Queries
    from poel_host.worker import Worker

    worker = Worker(poel_settings, poel_plugins, log=get_logger())
    queries = Queries(poel_settings.schema_name)

    def run(job_type: str, payload: Any = None, **options: Any) -> JobResult:
        job_id = poel_queue.enqueue(job_type, payload, **options)
        with structlog.testing.capture_logs() as logs:
            ran = worker.run_once()
        assert job_id in ran, f"job {job_id} was not claimed (is it due? is its plugin loaded?)"
        with connection(poel_settings.dsn) as conn:
            row = conn.execute(queries["get_job"], {"id": job_id}).fetchone()
        assert row is not None
        own = [dict(entry) for entry in logs if entry.get("jobId") == job_id]
        return JobResult(job_id, row, own)

    yield run
    worker.close()


@pytest.fixture
def enqueued(poel_settings: Settings) -> Callable[..., list[dict[str, Any]]]:
    """``enqueued(job_type=None, state=None)``: the jobs in the table, oldest first, to
    assert on what a handler (or the code under test) enqueued."""
    from poel_host.queries import Queries

    query = Queries(poel_settings.schema_name)["find_jobs"]

    def jobs(job_type: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        with connection(poel_settings.dsn) as conn:
            return conn.execute(query, {"job_type": job_type, "state": state}).fetchall()

    return jobs
