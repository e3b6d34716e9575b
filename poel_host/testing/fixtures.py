"""The kit's fixtures. Each imports what it needs when a test first asks for it.

This module is imported in every pytest session of an environment with poel-host
installed, before the project's conftest files: importing psycopg (or a module that does)
here would fix psycopg's wait function before the project could choose to patch, and
load the database stack into sessions that never use it. So the imports of the kit's
modules are inside the fixtures, and the names below are only annotations.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from poel_host.testing.patching import require_patched

if TYPE_CHECKING:
    import psycopg

    from poel_host.plugins import Plugins
    from poel_host.queue import Queue
    from poel_host.settings import Settings
    from poel_host.testing.context import CapturedContext
    from poel_host.testing.runner import JobRunner

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def poel_plugins() -> Plugins:
    """The installed plugins, as ``poel-host serve`` would load them (POEL_LOAD_PLUGINS)."""
    from poel_host.plugins import load_plugins
    from poel_host.settings import Settings

    settings = Settings()
    return load_plugins(settings.plugins_to_load, settings.plugins_disabled)


@pytest.fixture(scope="session")
def poel_template(poel_plugins: Plugins) -> Iterator[str]:
    """A database migrated with the host's and the plugins' migrations, used as template,
    in the configured schema (``POEL_SCHEMA``)."""
    from poel_host.settings import Settings
    from poel_host.testing.databases import create_template, drop_database

    name = f"poel_tpl_{os.getpid()}"
    create_template(name, Settings().schema_name, poel_plugins.migrations())
    yield name
    drop_database(name)


@pytest.fixture
def poel_dsn(poel_template: str) -> Iterator[str]:
    """The URL of a fresh, migrated database for this test (dropped afterwards)."""
    from poel_host.testing.databases import create_database, drop_database, dsn_for

    name = f"poel_t_{os.getpid()}_{next(_counter)}"
    create_database(name, template=poel_template)
    yield dsn_for(name)
    drop_database(name)


@pytest.fixture
def poel_settings_overrides() -> dict[str, Any]:
    """Variables added to ``poel_settings`` (empty). Override it to point the handlers of
    ``run_job`` and ``poel_context`` elsewhere, e.g. ``ctx.supabase`` at a test server::

        @pytest.fixture
        def poel_settings_overrides(fake_supabase):
            return {"SUPABASE_URL": fake_supabase.url, "SUPABASE_SERVICE_ROLE_KEY": "test-key"}
    """
    return {}


@pytest.fixture
def poel_settings(poel_dsn: str, poel_settings_overrides: dict[str, Any]) -> Settings:
    """Settings for the fresh database, with quick polling and retries for tests, and
    ``poel_settings_overrides``."""
    from poel_host.settings import Settings

    overrides: dict[str, Any] = {
        "DATABASE_URL": poel_dsn,
        "POEL_POLL_INTERVAL_MS": 50,
        "POEL_RETRY_BACKOFF_MS": 10,
        "HEALTH_CHECK_PORT": 0,
        **poel_settings_overrides,
    }
    return Settings(**overrides)


@pytest.fixture
def poel_queue(poel_settings: Settings, poel_plugins: Plugins) -> Iterator[Queue]:
    """A :class:`~poel_host.Queue` on the fresh database, validating with the plugins."""
    from poel_host.queue import Queue

    schema = poel_settings.schema_name
    with Queue(poel_settings.dsn, schema=schema, jobs=poel_plugins.jobs) as queue:
        yield queue


@pytest.fixture
def poel_conn(poel_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (dict rows) to the fresh database, for assertions."""
    from poel_host.database import connection

    with connection(poel_dsn) as conn:
        yield conn


@pytest.fixture(scope="session")
def poel_green(pytestconfig: pytest.Config) -> None:
    """Fails, saying what to add to the ini file, unless the session opted in to gevent's
    patching, which the worker running in-process needs."""
    require_patched(pytestconfig)


@pytest.fixture
def run_job(
    poel_green: None, poel_settings: Settings, poel_plugins: Plugins, poel_queue: Queue
) -> Iterator[JobRunner]:
    """``run_job(type, payload, **enqueue_options)``: enqueue one job and run it once
    through the real claim, validate, run and complete path of the worker; returns a
    :class:`JobResult` (the job's row and its logs). ``run_job.retry(job_id)`` runs the
    next attempt of a job queued for a retry, without waiting for its backoff;
    ``run_job.workflow(flow)`` enqueues a workflow and runs its steps until none is due
    (a :class:`WorkflowRun`: the workflow's state and each step's result). Needs the
    session's opt-in to gevent (``poel_gevent = true``)."""
    from poel_host.logs import get_logger
    from poel_host.testing.runner import JobRunner
    from poel_host.worker import Worker

    worker = Worker(poel_settings, poel_plugins, log=get_logger())
    yield JobRunner(worker, poel_queue, poel_settings)
    worker.close()


@pytest.fixture
def poel_context(poel_settings: Settings, poel_queue: Queue) -> CapturedContext:
    """A :class:`CapturedContext` on the fresh database, to call a handler directly::

    def test_handler(poel_context):
        process(NewRecord(record_id=1), poel_context)
        assert "record processed" in poel_context.events
    """
    from poel_host.testing.context import make_context

    return make_context(poel_settings.dsn, queue=poel_queue, settings=poel_settings)


@pytest.fixture
def enqueued(poel_settings: Settings) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """``enqueued(job_type=None, state=None)``: the jobs in the table, oldest first, to
    assert on what a handler (or the code under test) enqueued."""
    from poel_host.database import KeptConnection
    from poel_host.store import Store
    from poel_host.testing.jobs_table import finder

    conn = KeptConnection(poel_settings.dsn, name="kit")
    yield finder(Store(poel_settings.schema_name, conn))
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
    from poel_host.testing.jobs_table import checker

    return checker(enqueued)
