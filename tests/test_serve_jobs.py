"""Jobs run by a real ``poel-host serve`` subprocess: enqueue paths, retries, dead letters,
timeouts, invalid payloads, several workers sharing one table, workers without a plugin."""

from __future__ import annotations

import datetime as dt

import pytest

from poel_host.queue import JobRequest

pytestmark = pytest.mark.process


def job(conn, job_id):
    return conn.execute(
        "SELECT id, job_type, state::text AS state, attempts, max_attempts, last_error, errors,"
        " lease_owner, lease_expires_at FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


def runs(conn, job_id):
    return conn.execute(
        "SELECT key, attempt, note, pid FROM poel_test_runs WHERE job_id = %s ORDER BY id",
        [job_id],
    ).fetchall()


def test_job_enqueued_three_ways_is_processed_once_each(
    serve, poel_queue, poel_conn, poel_dsn, poel_cli, wait_sql
):
    worker = serve()
    from_python = poel_queue.enqueue("test.record", {"key": "python"})
    from_sql = poel_conn.execute(
        "SELECT poel.enqueue('test.record', '{\"key\": \"sql\"}'::jsonb) AS id"
    ).fetchone()["id"]
    cli = poel_cli(
        "enqueue",
        "test.record",
        '{"key": "cli"}',
        DATABASE_URL=poel_dsn,
        POEL_LOAD_PLUGINS="poel-testjobs",
    )
    assert cli.returncode == 0, cli.stderr
    from_cli = int(cli.stdout.strip())
    ids = [from_python, from_sql, from_cli]

    wait_sql("SELECT count(*) = 3 FROM poel.jobs WHERE id = ANY(%s) AND state = 'succeeded'", [ids])
    for job_id, key in zip(ids, ["python", "sql", "cli"], strict=True):
        row = job(poel_conn, job_id)
        assert (row["state"], row["attempts"], row["last_error"]) == ("succeeded", 1, None)
        assert [(r["key"], r["attempt"], r["pid"]) for r in runs(poel_conn, job_id)] == [
            (key, 1, worker.pid)
        ]
    assert poel_conn.execute("SELECT count(*) FROM poel_test_runs").fetchone()["count"] == 3


def test_flaky_job_retries_with_growing_backoff_then_succeeds(
    serve, poel_queue, poel_conn, wait_sql
):
    serve()
    job_id = poel_queue.enqueue("test.flaky", {"key": "f", "fail_times": 2})

    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id])
    row = job(poel_conn, job_id)
    assert row["attempts"] == 3
    assert row["last_error"] == "RuntimeError: flaky failure 2"
    errors = row["errors"]
    assert [e["attempt"] for e in errors] == [1, 2]
    assert [e["error"] for e in errors] == [
        "RuntimeError: flaky failure 1",
        "RuntimeError: flaky failure 2",
    ]
    delays = [
        (
            dt.datetime.fromisoformat(e["retry_at"]) - dt.datetime.fromisoformat(e["at"])
        ).total_seconds()
        for e in errors
    ]
    # test.flaky has backoff=0.2 s: about 0.2 s then 0.4 s, each within +-25% jitter.
    assert 0.15 <= delays[0] <= 0.25, delays
    assert 0.3 <= delays[1] <= 0.5, delays
    assert delays[1] > delays[0]
    assert [r["attempt"] for r in runs(poel_conn, job_id)] == [1, 2, 3]


def test_always_failing_job_ends_failed_with_every_error(serve, poel_queue, poel_conn, wait_sql):
    serve()
    job_id = poel_queue.enqueue("test.fail", {"key": "x"})

    wait_sql("SELECT state = 'failed' FROM poel.jobs WHERE id = %s", [job_id])
    row = job(poel_conn, job_id)
    assert row["attempts"] == row["max_attempts"] == 3
    assert row["last_error"] == "ValueError: this job always fails"
    assert [e["attempt"] for e in row["errors"]] == [1, 2, 3]
    assert all(e["error"] == "ValueError: this job always fails" for e in row["errors"])
    assert row["errors"][-1]["retry_at"] is None  # the last attempt is not retried
    assert row["lease_owner"] is None
    assert [r["attempt"] for r in runs(poel_conn, job_id)] == [1, 2, 3]


def test_timeout_fails_the_job_and_leaves_no_query_running(
    serve, poel_queue, poel_conn, wait_sql, wait_for
):
    serve()
    job_id = poel_queue.enqueue("test.slow_query", {"key": "slow", "seconds": 20})

    sleeping = (
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = "
        "'poel-test-slow-query' AND state = 'active' AND query LIKE '%%pg_sleep%%'"
    )
    # The job (timeout=1s, max_attempts=1) must fail within a few seconds, not 20.
    wait_sql("SELECT state = 'failed' FROM poel.jobs WHERE id = %s", [job_id], timeout=8)
    row = job(poel_conn, job_id)
    assert row["attempts"] == 1
    assert "timed out" in row["last_error"], row["last_error"]
    # ... and the server-side sleep was cancelled, not left running.
    wait_for(
        lambda: poel_conn.execute(sleeping).fetchone()["n"] == 0,
        timeout=3,
        what="the pg_sleep of the timed-out job to be cancelled",
    )


def test_invalid_stored_payload_fails_at_once(serve, poel_conn, wait_sql):
    serve()
    job_id = poel_conn.execute(
        "SELECT poel.enqueue('test.flaky', '{\"fail_times\": \"x\"}'::jsonb) AS id"
    ).fetchone()["id"]

    wait_sql("SELECT state = 'failed' FROM poel.jobs WHERE id = %s", [job_id])
    row = job(poel_conn, job_id)
    assert row["attempts"] == 1
    assert "fail_times" in row["last_error"], row["last_error"]
    assert len(row["errors"]) == 1
    assert runs(poel_conn, job_id) == []  # the handler never ran


def test_two_serve_processes_drain_2000_jobs_each_exactly_once(
    serve, poel_queue, poel_conn, wait_sql
):
    first = serve(WORKER_CONCURRENCY=20)
    second = serve(WORKER_CONCURRENCY=20)
    ids = poel_queue.enqueue_many(JobRequest("test.record", {"key": f"k{i}"}) for i in range(2000))
    assert len(set(ids)) == 2000

    wait_sql(
        "SELECT count(*) = 2000 FROM poel.jobs WHERE state = 'succeeded'",
        timeout=60,
    )
    counts = poel_conn.execute(
        "SELECT count(*) AS runs, count(DISTINCT job_id) AS jobs, count(DISTINCT key) AS keys"
        " FROM poel_test_runs"
    ).fetchone()
    assert counts == {"runs": 2000, "jobs": 2000, "keys": 2000}
    assert (
        poel_conn.execute("SELECT count(*) FROM poel.jobs WHERE attempts <> 1").fetchone()["count"]
        == 0
    )
    by_pid = {
        r["pid"]: r["n"]
        for r in poel_conn.execute("SELECT pid, count(*) AS n FROM poel_test_runs GROUP BY pid")
    }
    assert set(by_pid) == {first.pid, second.pid}, by_pid
    assert first.stop() == 0
    assert second.stop() == 0


def test_worker_leaves_jobs_of_plugins_it_has_not_loaded(serve, poel_queue, poel_conn, wait_sql):
    # process_new_record belongs to poel-records, which this worker does not load.
    foreign = poel_conn.execute(
        "SELECT poel.enqueue('process_new_record', '{\"record_id\": 1}'::jsonb) AS id"
    ).fetchone()["id"]
    worker = serve(POEL_LOAD_PLUGINS="poel-testjobs", POEL_LOG_LEVEL="debug")
    own = [poel_queue.enqueue("test.record", {"key": str(i)}) for i in range(3)]

    wait_sql("SELECT count(*) = 3 FROM poel.jobs WHERE id = ANY(%s) AND state = 'succeeded'", [own])
    # The worker has claimed everything it can (three polls' worth) before we look.
    worker.wait_log("job succeeded", jobId=own[-1])
    assert worker.stop() == 0
    row = job(poel_conn, foreign)
    assert (row["state"], row["attempts"], row["last_error"], row["lease_owner"]) == (
        "queued",
        0,
        None,
        None,
    )
    assert not any(entry.get("jobId") == foreign for entry in worker.logs)
