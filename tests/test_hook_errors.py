"""Lifecycle hooks (``job_started``, ``job_finished``) that misbehave, through a real
``poel-host serve`` loading the ``poel-testhooks`` test plugin.

A hook's error is contained and logged, whatever the exception (even one that cannot be
turned into text), and never strands the job; a hook that uses ``ctx.connection()`` gets
the job's own statement_timeout.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest

pytestmark = pytest.mark.process

PLUGINS = "poel-testjobs,poel-testhooks"


@pytest.fixture(autouse=True)
def _testhooks_installed() -> None:
    try:
        importlib.metadata.distribution("poel-testhooks")
    except importlib.metadata.PackageNotFoundError:
        message = (
            "needs the poel-testhooks test plugin: "
            "pip install --no-deps ./tests/plugins/poel-testhooks (tox.ini commands_pre)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def job(conn, job_id):
    return conn.execute(
        "SELECT state::text AS state, attempts, last_error FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


@pytest.mark.parametrize(
    ("job_type", "hook"),
    [("testhooks.started_raises", "job_started"), ("testhooks.finished_raises", "job_finished")],
)
def test_a_hook_raising_an_unprintable_exception_does_not_strand_the_job(
    serve, poel_queue, poel_conn, wait_sql, wait_for, job_type, hook
):
    worker = serve(POEL_LOAD_PLUGINS=PLUGINS)
    first = poel_queue.enqueue(job_type, {"key": "1"})
    wait_for(
        lambda: job(poel_conn, first)["state"] not in ("queued", "running"),
        timeout=5,
        what=f"job {first} to finish (it stays running when the {hook} error escapes)",
    )
    assert (job(poel_conn, first)["state"], job(poel_conn, first)["attempts"]) == (
        "succeeded",
        1,
    )

    # Logged as an error naming the plugin and the hook.
    def logged():
        return [
            entry
            for entry in worker.logs
            if entry.get("level") == "error"
            and "poel-testhooks" in json.dumps(entry)
            and hook in json.dumps(entry)
        ]

    wait_for(logged, timeout=5, what=f"an error log line naming poel-testhooks and {hook}")

    # The worker keeps working: the same again, and an ordinary job.
    again = poel_queue.enqueue(job_type, {"key": "2"})
    plain = poel_queue.enqueue("test.record", {"key": "plain"})
    wait_sql(
        "SELECT count(*) = 2 FROM poel.jobs WHERE id = ANY(%s) AND state = 'succeeded'",
        [[again, plain]],
        timeout=5,
    )
    assert worker.http("/health").status == 200
    assert worker.stop() == 0


def test_a_job_started_hook_gets_the_jobs_statement_timeout(serve, poel_queue, wait_sql):
    worker = serve(POEL_LOAD_PLUGINS=PLUGINS, JOB_TIMEOUT_MS=60_000)
    job_id = poel_queue.enqueue("testhooks.probe", {})
    probe = worker.wait_log("testhooks probe", jobId=job_id)
    timeout_ms, sleep = probe["statement_timeout_ms"], probe["sleep"]
    assert isinstance(timeout_ms, int) and 50_000 <= timeout_ms <= 60_000, (
        f"statement_timeout in job_started's ctx.connection(): {timeout_ms!r}"
    )
    assert sleep == "ok", f"SELECT pg_sleep(0.05) in job_started's ctx.connection(): {sleep}"
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id])
