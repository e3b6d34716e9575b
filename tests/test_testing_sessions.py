"""The kit in other projects' pytest sessions: patched only where a project opts in.

Installing poel-host registers its pytest plugin in every pytest session of the
environment, a web application's included. Such a session must not be monkey-patched by
gevent just because poel-host is installed; only a session that opts in
(``poel_gevent = true`` in its pytest configuration, or ``--poel-gevent``) is patched, early
enough for psycopg to be green when ``run_job`` runs the worker in-process. Each case is a
real pytest run in a throwaway project, since this test process itself has opted in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HEAVY = ["psycopg", "psycopg_pool", "gevent", "gevent.monkey", "poel_host.database"]

# Records what was imported before the project's own conftest ran: the kit must not have
# imported psycopg or gevent there, or the project could no longer choose to patch first.
CONFTEST = f"""
import json, sys
from pathlib import Path

Path(__file__).with_name("conftest.json").write_text(
    json.dumps([m for m in {HEAVY!r} if m in sys.modules])
)
"""

# What a test in that session sees: is the standard library patched, and which wait
# function did psycopg choose when it was imported (``wait_c`` blocks the gevent hub).
OBSERVE = """
import json
from pathlib import Path

import gevent.monkey
from psycopg import waiting


def test_observe():
    Path(__file__).with_name("observed.json").write_text(json.dumps({
        "socket_patched": gevent.monkey.is_module_patched("socket"),
        "wait": waiting.wait.__name__,
    }))
"""

RUN_JOB = """
def test_run_job(run_job):
    result = run_job("test.noop", {})
    assert result.state == "succeeded", result.row
"""

OPT_IN = "poel_gevent = true\n"


@dataclass
class Session:
    """One finished pytest run in a project folder."""

    project: Path
    returncode: int
    output: str

    def read(self, name: str) -> Any:
        return json.loads((self.project / name).read_text())


def make_project(root: Path, *, ini: str = "", **tests: str) -> Path:
    """A project folder: a pyproject.toml with ``ini`` in its pytest section, the recording
    conftest, and a test module per keyword (``name=source``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider"\n' + ini
    )
    (root / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    for name, source in tests.items():
        (root / f"test_{name}.py").write_text(textwrap.dedent(source))
    return root


def run_pytest(project: Path, *args: str, inherit_server: bool = True, **env: str) -> Session:
    """``pytest -q ARGS`` in ``project``, with a clean environment: nothing Poel or pytest
    reads is inherited but the test server's URL (unless ``inherit_server`` is false), and
    only poel-testjobs is loaded."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POEL_", "PYTEST_")) and key != "DATABASE_URL"
    }
    if inherit_server and "POEL_TEST_DATABASE_URL" in os.environ:
        environment["POEL_TEST_DATABASE_URL"] = os.environ["POEL_TEST_DATABASE_URL"]
    environment.update(POEL_LOAD_PLUGINS="poel-testjobs", **env)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Session(project, done.returncode, done.stdout + done.stderr)


@pytest.mark.process
def test_a_project_that_does_not_opt_in_is_not_patched(tmp_path: Path) -> None:
    session = run_pytest(make_project(tmp_path, observe=OBSERVE))

    assert session.returncode == 0, session.output
    assert session.read("conftest.json") == [], "the kit imported these before conftest.py"
    assert session.read("observed.json") == {"socket_patched": False, "wait": "wait_c"}


@pytest.mark.process
@pytest.mark.parametrize("how", ["ini", "flag"])
def test_a_project_that_opts_in_is_patched_and_runs_jobs(tmp_path: Path, how: str) -> None:
    project = make_project(
        tmp_path, ini=OPT_IN if how == "ini" else "", observe=OBSERVE, run_job=RUN_JOB
    )

    session = run_pytest(project, *(["--poel-gevent"] if how == "flag" else []))

    assert session.returncode == 0, session.output
    assert "2 passed" in session.output
    assert "psycopg" not in session.read("conftest.json")
    observed = session.read("observed.json")
    assert observed["socket_patched"] is True
    assert observed["wait"] != "wait_c"


@pytest.mark.process
def test_run_job_without_the_opt_in_says_what_to_add(tmp_path: Path) -> None:
    session = run_pytest(make_project(tmp_path, run_job=RUN_JOB))

    assert session.returncode == 1, session.output
    assert "1 error" in session.output
    assert "poel_gevent = true" in session.output
    assert "[tool.pytest.ini_options]" in session.output
    assert "--poel-gevent" in session.output
    # The reason itself, not a traceback through gevent or psycopg.
    assert "Traceback" not in session.output
    assert f"{os.sep}gevent{os.sep}" not in session.output


@pytest.mark.process
def test_the_kit_uses_the_configured_schema(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        ini=OPT_IN,
        schema="""
        def test_jobs_live_in_the_configured_schema(run_job, poel_queue, poel_conn):
            result = run_job("test.noop", {})
            assert result.state == "succeeded", result.row
            queued = poel_queue.enqueue("test.noop", {})

            rows = poel_conn.execute("SELECT id, state FROM kit_schema.jobs ORDER BY id")
            assert rows.fetchall() == [
                {"id": result.id, "state": "succeeded"},
                {"id": queued, "state": "queued"},
            ]
            owners = poel_conn.execute("SELECT DISTINCT plugin FROM kit_schema.migrations")
            assert {row["plugin"] for row in owners} == {"poel-host", "poel-testjobs"}
            default = poel_conn.execute("SELECT to_regnamespace('poel') AS oid").fetchone()
            assert default["oid"] is None, "the template was migrated into schema poel"
        """,
    )

    session = run_pytest(project, POEL_SCHEMA="kit_schema")

    assert session.returncode == 0, session.output
    assert "1 passed" in session.output


@pytest.mark.process
def test_run_job_after_another_plugin_imported_psycopg_says_so(tmp_path: Path) -> None:
    project = make_project(tmp_path, ini=OPT_IN, run_job=RUN_JOB)
    (project / "early_psycopg.py").write_text("import psycopg  # a plugin loaded before the kit\n")

    session = run_pytest(project, "-p", "early_psycopg")

    assert session.returncode == 1, session.output
    assert "psycopg was imported before the kit applied gevent's patching" in session.output
    assert "Traceback" not in session.output


# Records the server the session used, and whether its data folder exists meanwhile.
WHERE = """
import json, os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def test_where(run_job):
    assert run_job("test.noop", {}).state == "succeeded"
    url = os.environ["POEL_TEST_DATABASE_URL"]
    socket_dir = parse_qs(urlsplit(url).query)["host"][0]
    Path(__file__).with_name("where.json").write_text(json.dumps({
        "url": url, "socket_dir": socket_dir, "existed": Path(socket_dir).is_dir(),
    }))
"""


@pytest.mark.process
@pytest.mark.embedded
def test_a_session_with_no_server_runs_on_an_embedded_one_and_removes_it(
    tmp_path: Path, closed_local_url: str
) -> None:
    from poel_host.embedded import running_servers

    project = make_project(tmp_path, ini=OPT_IN, where=WHERE, run_job=RUN_JOB)

    session = run_pytest(project, inherit_server=False, POEL_LOCAL_DATABASE_URL=closed_local_url)

    assert session.returncode == 0, session.output
    assert "2 passed" in session.output
    where = session.read("where.json")
    assert where["existed"], where
    assert "/poel-test-pg-" in where["socket_dir"], "not the kit's embedded server"
    assert not Path(where["socket_dir"]).exists(), "the embedded server's folder was left"
    assert running_servers(Path(where["socket_dir"])) == []
