"""Signals to ``poel-host serve``: drain within the grace period, hand back what is left,
and exit at once on a second signal."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.process


def job(conn, job_id):
    return conn.execute(
        "SELECT state::text AS state, attempts, last_error, errors, lease_owner,"
        " lease_expires_at, started_at FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


def notes(conn, job_id):
    rows = conn.execute(
        "SELECT note FROM poel_test_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()
    return [r["note"] for r in rows]


def started(job_id):
    return (
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'",
        [job_id],
    )


def test_sigterm_lets_a_running_job_finish(serve, poel_queue, poel_conn, wait_sql, wait_for):
    worker = serve(POEL_SHUTDOWN_TIMEOUT_MS=10_000)
    job_id = poel_queue.enqueue("test.sleep", {"key": "s", "seconds": 2.5})
    wait_sql(*started(job_id))

    worker.signal(signal.SIGTERM)
    # While it drains, the worker says it is unhealthy (a load balancer stops sending it
    # traffic); the HTTP server stays up until the drain is over.
    health = wait_for(
        lambda: (answer := worker.http("/health")).status == 503 and answer,
        timeout=1.5,
        what="/health to answer 503 while draining",
    )
    assert health.body["status"] == "unhealthy"
    assert "draining" in health.body["reason"]

    assert worker.wait_exit() == 0
    row = job(poel_conn, job_id)
    assert (row["state"], row["attempts"], row["last_error"], row["lease_owner"]) == (
        "succeeded",
        1,
        None,
        None,
    )
    assert notes(poel_conn, job_id) == ["start", "end"]
    assert worker.find_log("worker stopped", handed_back=0)


def test_sigterm_past_the_grace_period_hands_the_job_back(serve, poel_queue, poel_conn, wait_sql):
    worker = serve(POEL_SHUTDOWN_TIMEOUT_MS=300)
    job_id = poel_queue.enqueue("test.sleep", {"key": "s", "seconds": 30})
    wait_sql(*started(job_id))

    signalled = time.monotonic()
    assert worker.stop(timeout=10) == 0
    assert time.monotonic() - signalled < 8
    row = job(poel_conn, job_id)
    assert row["state"] == "queued"
    assert row["attempts"] == 0  # the interrupted attempt does not count
    assert (row["lease_owner"], row["lease_expires_at"], row["started_at"]) == (None, None, None)
    assert (row["last_error"], row["errors"]) == (None, [])
    assert notes(poel_conn, job_id) == ["start"]
    assert worker.find_log("worker stopped", handed_back=1)


def test_second_signal_exits_at_once(serve, poel_queue, poel_conn, wait_sql):
    worker = serve(POEL_SHUTDOWN_TIMEOUT_MS=60_000)
    job_id = poel_queue.enqueue("test.sleep", {"key": "s", "seconds": 30})
    wait_sql(*started(job_id))

    worker.signal(signal.SIGTERM)
    worker.wait_log("worker draining")
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(timeout=5)
    assert code != 0
    assert time.monotonic() - signalled < 3
    assert worker.find_log("second signal: exiting now")
    # Not handed back: the job comes back when its lease expires.
    assert job(poel_conn, job_id)["state"] == "running"
    assert notes(poel_conn, job_id) == ["start"]
