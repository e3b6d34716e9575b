"""The ``poel-host`` command as an operator meets it: bad settings, an out-of-date schema,
and ``migrate`` run by several processes at once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from poel_host.database import connection
from poel_host.migrations import host_migrations
from poel_host.testing import create_database, drop_database, dsn_for

pytestmark = pytest.mark.process

PASSWORD = "hunter2-s3cret"


@pytest.fixture
def empty_dsn(request):
    """A fresh database with nothing in it (no Poel schema)."""
    name = f"poel_empty_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    create_database(name)
    yield dsn_for(name)
    drop_database(name)


def test_bad_settings_are_named_together_and_exit_2(poel_cli):
    result = poel_cli(
        "serve",
        WORKER_CONCURRENCY="abc",
        JOB_TIMEOUT_MS="0",
        POEL_ENV="staging",
        DATABASE_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/nowhere",
        HEALTH_CHECK_PORT="0",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    messages = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(messages) == 1, result.stderr  # one message, every variable listed under it
    assert messages[0].startswith("poel-host: error: invalid configuration")
    for variable in ("WORKER_CONCURRENCY", "JOB_TIMEOUT_MS", "POEL_ENV"):
        assert variable in result.stderr
    assert "abc" in result.stderr  # the operator sees what was wrong ...
    assert PASSWORD not in result.stderr + result.stdout  # ... but never a secret
    assert result.stdout == ""


def test_bad_database_url_is_not_echoed(poel_cli):
    result = poel_cli(
        "serve",
        DATABASE_URL=f"mysql://root:{PASSWORD}@127.0.0.1/db",
        SUPABASE_SERVICE_ROLE_KEY="",
        SUPABASE_URL="ftp://example.invalid",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "SUPABASE_URL" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_unreachable_database_is_one_line_without_the_password(poel_cli):
    result = poel_cli(
        "migrate",
        DATABASE_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/db",
        POEL_CONNECT_TIMEOUT_S="2",
        POEL_LOAD_PLUGINS="",
    )
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("poel-host: error: ")
    assert PASSWORD not in result.stderr + result.stdout


def test_serve_refuses_an_out_of_date_schema(poel_cli, empty_dsn):
    result = poel_cli(
        "serve",
        DATABASE_URL=empty_dsn,
        POEL_AUTO_MIGRATE="false",
        POEL_LOAD_PLUGINS="poel-testjobs",
        HEALTH_CHECK_PORT="0",
    )
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "poel-host migrate" in result.stderr
    assert "poel-host:0001_jobs" in result.stderr  # what is missing is named

    # Host schema present, but a loaded plugin's migration missing: still out of date.
    migrated = poel_cli("migrate", DATABASE_URL=empty_dsn, POEL_LOAD_PLUGINS="")
    assert migrated.returncode == 0, migrated.stderr
    result = poel_cli(
        "serve",
        DATABASE_URL=empty_dsn,
        POEL_ENV="production",  # production never migrates by itself
        POEL_LOAD_PLUGINS="poel-testjobs",
        HEALTH_CHECK_PORT="0",
    )
    assert result.returncode == 5, result.stderr
    assert "poel-testjobs:0001_test_runs" in result.stderr
    assert "poel-host migrate" in result.stderr


def test_concurrent_migrate_applies_each_migration_once(poel_cli, empty_dsn):
    def migrate(_: int):
        return poel_cli("migrate", DATABASE_URL=empty_dsn, POEL_LOAD_PLUGINS="poel-testjobs")

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(migrate, range(3)))

    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    # Exactly one process applied the migrations; the others waited and found none to do.
    applied = [r for r in results if "applied " in r.stdout]
    assert len(applied) == 1, [r.stdout for r in results]
    assert sum("up to date" in r.stdout for r in results) == 2

    with connection(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT plugin, version, count(*) AS n FROM poel.migrations"
            " GROUP BY plugin, version ORDER BY plugin, version"
        ).fetchall()
    listed = {(r["plugin"], r["version"]) for r in rows}
    assert all(r["n"] == 1 for r in rows)
    assert {("poel-host", m.version) for m in host_migrations()} | {("poel-testjobs", 1)} == listed
