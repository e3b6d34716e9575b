"""Thread jobs (``executor="thread"``) beside greenlet jobs in one in-process worker: what a
handler on a native thread does (enqueue, log, connect, overrun its timeout) must never
touch the event loop's objects, and a thread's slot is free only once its handler returned.

A handler past its timeout cannot be killed: it is asked to stop (its own
``ctx.cancelled``), keeps its slot until it returns, and only then is its attempt reported
as timed out; so two attempts of one job never overlap, and a job waiting for a thread is
never timed out before its handler started.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from poel_host import JobRequest, Settings
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker


@pytest.fixture
def start_worker(poel_dsn: str) -> Iterator[Any]:
    """``start_worker(threads=N)``: a whole worker (claim loops, completer, leases) running
    in this process on a greenlet; stopped and drained at teardown."""
    running: list[tuple[Worker, gevent.Greenlet]] = []

    def start(*, threads: int, concurrency: int = 10) -> Worker:
        settings = Settings(
            DATABASE_URL=poel_dsn,
            WORKER_CONCURRENCY=concurrency,
            POEL_THREADS=threads,
            POEL_POLL_INTERVAL_MS=50,
            POEL_RETRY_BACKOFF_MS=10,
            HEALTH_CHECK_PORT=0,
        )
        plugins = load_plugins(["poel-testjobs", "poel-testthreads"])
        worker = Worker(settings, plugins, log=get_logger())
        running.append((worker, gevent.spawn(worker.run)))
        return worker

    yield start
    for worker, greenlet in running:
        worker.stop()
        greenlet.join(timeout=30)
        assert greenlet.dead, "the worker did not drain"


def runs(conn: Any, key: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT attempt, note, at FROM poel_test_runs WHERE key = %s ORDER BY id", [key]
    ).fetchall()


# Enqueueing and logging from a thread ------------------------------------------------------


def test_thread_and_greenlet_jobs_enqueue_follow_ups_at_once(
    start_worker: Any, poel_queue: Any, wait_sql: Any, poel_conn: Any
) -> None:
    """4 thread jobs and 4 greenlet jobs each enqueue 100 follow-ups at the same time:
    each executor enqueues on connections of its own, so nobody's command is "already in
    progress" and every fan-out and follow-up finishes."""
    start_worker(threads=4)
    poel_queue.enqueue_many(
        [JobRequest("test.thread_fanout", {"key": f"t{i}", "count": 100}) for i in range(4)]
        + [JobRequest("test.fanout", {"key": f"g{i}", "count": 100}) for i in range(4)]
    )
    wait_sql(
        "SELECT count(*) = 808 FROM poel.jobs WHERE state = 'succeeded'",
        timeout=60,
    )
    failed = poel_conn.execute(
        "SELECT job_type, last_error FROM poel.jobs WHERE state <> 'succeeded'"
    ).fetchall()
    assert failed == []


def test_a_thread_jobs_follow_up_is_validated(run_job: Any) -> None:
    result = run_job("test.thread_fanout", {"key": "v", "count": 1, "follow_up": "test.flaky"})
    assert result.state == "failed"
    assert result.error.startswith("InvalidPayload: ")
    assert "fail_times" in result.error


def test_a_thread_jobs_follow_ups_are_stored_in_order(run_job: Any, poel_conn: Any) -> None:
    result = run_job("test.thread_fanout", {"key": "tx", "count": 3})
    assert result.state == "succeeded", result.error
    follow_ups = poel_conn.execute(
        "SELECT payload->>'key' AS key FROM poel.jobs WHERE job_type = 'test.record' ORDER BY id"
    ).fetchall()
    assert [r["key"] for r in follow_ups] == ["tx.0", "tx.1", "tx.2"]


# Timeouts -----------------------------------------------------------------------------


def test_a_timed_out_thread_keeps_its_slot_so_attempts_never_overlap(
    start_worker: Any, poel_queue: Any, wait_sql: Any, poel_conn: Any
) -> None:
    """Two threads: attempt 1 overruns its 0.5 s timeout by a second; its retry must not
    start on the other thread while attempt 1 still runs."""
    start_worker(threads=2)
    job_id = poel_queue.enqueue("test.thread_overrun", {"key": "o", "seconds": 1.5})
    wait_sql("SELECT state = 'failed' FROM poel.jobs WHERE id = %s", [job_id], timeout=20)
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert row["attempts"] == 2
    assert [e["error"] for e in row["errors"]] == ["timed out after 0.5s"] * 2
    got = runs(poel_conn, "o")
    assert [(r["attempt"], r["note"]) for r in got] == [
        (1, "start"),
        (1, "end cancelled=True"),  # asked to stop: its own cancellation, not shutdown's
        (2, "start"),
        (2, "end cancelled=True"),
    ]
    # The attempt was reported (and the retry due) only once its thread had returned.
    assert got[2]["at"] >= got[1]["at"]
    assert row["finished_at"] >= got[3]["at"]


def test_a_job_waiting_for_a_thread_is_not_timed_out_before_it_starts(
    start_worker: Any, poel_queue: Any, wait_sql: Any, poel_conn: Any
) -> None:
    """One thread, taken by a job overrunning its timeout: the next job waits for the
    thread and then runs with its whole timeout, once."""
    start_worker(threads=1)
    stuck = poel_queue.enqueue(
        "test.thread_overrun", {"key": "stuck", "seconds": 1.5}, max_attempts=1
    )
    wait_sql("SELECT count(*) = 1 FROM poel_test_runs WHERE key = 'stuck'")
    quick = poel_queue.enqueue("test.thread_overrun", {"key": "quick", "seconds": 0})
    wait_sql(
        "SELECT bool_and(state IN ('succeeded', 'failed')) FROM poel.jobs WHERE id IN (%s, %s)",
        [stuck, quick],
        timeout=20,
    )
    rows = {
        r["id"]: r
        for r in poel_conn.execute(
            "SELECT id, state, attempts, last_error FROM poel.jobs WHERE id IN (%s, %s)",
            [stuck, quick],
        )
    }
    assert (rows[stuck]["state"], rows[stuck]["last_error"]) == ("failed", "timed out after 0.5s")
    assert (rows[quick]["state"], rows[quick]["attempts"]) == ("succeeded", 1)
    assert runs(poel_conn, "quick")[0]["at"] >= runs(poel_conn, "stuck")[1]["at"]


def test_a_thread_that_heeds_its_cancellation_frees_its_slot_at_once(run_job: Any) -> None:
    result = run_job("test.thread_overrun", {"key": "h", "seconds": 30, "heed": True})
    assert (result.state, result.error) == ("queued", "timed out after 0.5s")
    assert [r["event"] for r in result.logs if r["event"].startswith("thread")] == [
        "thread job past its timeout; its slot stays taken until its handler returns",
    ]
