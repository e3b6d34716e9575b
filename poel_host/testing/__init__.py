"""Poel's pytest plugin: fixtures to test job handlers against a real PostgreSQL.

Installed with poel-host and registered through the ``pytest11`` entry point, so a plugin
author's tests just use the fixtures::

    def test_process(run_job):
        result = run_job("process_new_record", {"record_id": 1})
        assert result.state == "succeeded"

Fixtures: ``poel_dsn`` (a fresh migrated database), ``poel_settings`` (with
``poel_settings_overrides``, a fixture to override: ``SUPABASE_URL`` of a test server for
``ctx.supabase``...), ``poel_queue``,
``poel_conn`` (autocommit, dict rows), ``run_job`` (enqueue and run through the worker;
``run_job.retry(job_id)`` runs a retry's next attempt at once, ``run_job.workflow(flow)``
a whole workflow, step after step), ``poel_context`` (a
:class:`CapturedContext` to call a handler directly, its logs captured), ``enqueued``
and ``assert_enqueued`` (what is in the jobs table), ``poel_plugins``.

The server is found through ``POEL_TEST_DATABASE_URL`` (default: the local server at
``postgresql://postgres@127.0.0.1:5432/postgres`` when one answers, otherwise an embedded
PostgreSQL that the session starts in a temporary folder and removes at its end; needs
``poel-host[embedded]``). A template database is migrated once
per test session (host and loaded plugins' migrations, in ``POEL_SCHEMA``); each test that
asks for ``poel_dsn`` gets a fresh copy of it, dropped afterwards.

Being an entry-point plugin, this module is imported by every pytest session in the
environment, so it patches nothing and imports nothing heavy: a session is patched by
gevent only when its project opts in with ``poel_gevent = true`` (see
:mod:`poel_host.testing.patching`), which ``run_job`` needs; the fixtures import the kit
when used (:mod:`poel_host.testing.fixtures`), and so do the names below (``make_context``,
``server_dsn``...), on first access.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import pytest

from poel_host.testing.fixtures import (
    assert_enqueued,
    enqueued,
    poel_conn,
    poel_context,
    poel_dsn,
    poel_green,
    poel_plugins,
    poel_queue,
    poel_settings,
    poel_settings_overrides,
    poel_template,
    run_job,
)
from poel_host.testing.patching import pytest_addoption, pytest_load_initial_conftests


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which PostgreSQL the session's tests ran on (when they used one)."""
    databases = sys.modules.get("poel_host.testing.databases")
    described = databases.describe_server() if databases is not None else None
    if described:
        terminalreporter.write_line(f"poel-host test server: {described}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop and remove the embedded test server, if this session started one."""
    databases = sys.modules.get("poel_host.testing.databases")
    if databases is not None:
        databases.stop_embedded()


_EXPORTS = {
    "CapturedContext": "poel_host.testing.context",
    "make_context": "poel_host.testing.context",
    "JobResult": "poel_host.testing.runner",
    "JobRunner": "poel_host.testing.runner",
    "DEFAULT_SERVER": "poel_host.testing.databases",
    "server_dsn": "poel_host.testing.databases",
    "dsn_for": "poel_host.testing.databases",
    "create_database": "poel_host.testing.databases",
    "drop_database": "poel_host.testing.databases",
}

__all__ = [
    "DEFAULT_SERVER",
    "CapturedContext",
    "JobResult",
    "JobRunner",
    "assert_enqueued",
    "create_database",
    "drop_database",
    "dsn_for",
    "enqueued",
    "make_context",
    "poel_conn",
    "poel_context",
    "poel_dsn",
    "poel_green",
    "poel_plugins",
    "poel_queue",
    "poel_settings",
    "poel_settings_overrides",
    "poel_template",
    "pytest_addoption",
    "pytest_load_initial_conftests",
    "pytest_terminal_summary",
    "pytest_unconfigure",
    "run_job",
    "server_dsn",
]

if TYPE_CHECKING:
    from poel_host.testing.context import CapturedContext, make_context
    from poel_host.testing.databases import (
        DEFAULT_SERVER,
        create_database,
        drop_database,
        dsn_for,
        server_dsn,
    )
    from poel_host.testing.runner import JobResult, JobRunner


def __getattr__(name: str) -> Any:
    # No __dir__ listing these: pytest scans a plugin's dir() for hooks and fixtures, and
    # would import the database stack with them.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poel_host.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
