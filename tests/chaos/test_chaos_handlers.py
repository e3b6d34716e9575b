"""Handlers that misbehave, under a real ``poel-host serve``: BaseException subclasses,
sys.exit, GreenletExit raised by the handler itself, a connection used after its block
or never given back, a return value, and CPU work that blocks the hub past the lease. The
worker survives, each job gets a consistent outcome, and the blocking is logged."""

from __future__ import annotations

import time

import pytest

from poel_host import JobRequest

pytestmark = pytest.mark.chaos


def job(conn, job_id: int) -> dict:
    return conn.execute(
        "SELECT state::text AS state, attempts, last_error, errors FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


def test_misbehaving_handlers_get_their_outcome_and_the_worker_survives(
    serve, poel_queue, poel_conn, wait_sql, figures
):
    # two pooled connections for handlers: a handler that kept one would soon starve all
    worker = serve(POEL_DB_POOL_SIZE=2, WORKER_CONCURRENCY=4)
    expected = {
        "base_exception": ("failed", "HandlerEscape: a BaseException subclass"),
        "sys_exit": ("failed", "SystemExit: 7"),
        "greenlet_exit": ("failed", "GreenletExit: raised by the handler, not a shutdown"),
        "keep_connection": ("failed", "after its `with ctx.connection()` block"),
        "hold_connection": ("failed", "`with ctx.connection()` block open"),
        "return_value": ("succeeded", None),
    }
    ids = {}
    for how in expected:
        for i in range(3):  # more than the pool holds
            ids[(how, i)] = poel_queue.enqueue(
                "test.misbehave", {"key": f"{how}{i}", "how": how}, max_attempts=1
            )
    started = time.monotonic()
    wait_sql(
        "SELECT count(*) = %s FROM poel.jobs WHERE state IN ('succeeded', 'failed')",
        [len(ids)],
        timeout=30,
    )
    settled_s = time.monotonic() - started
    outcomes = {}
    for (how, i), job_id in ids.items():
        row = job(poel_conn, job_id)
        state, error = expected[how]
        outcomes[f"{how}{i}"] = (row["state"], row["last_error"])
        assert row["state"] == state, (how, row)
        assert row["attempts"] == 1
        if error is None:
            assert row["last_error"] is None
        else:
            assert error in row["last_error"], (how, row["last_error"])
    # nothing a misbehaving handler wrote outside its block was committed
    notes = {r["note"] for r in poel_conn.execute("SELECT DISTINCT note FROM poel_test_runs")}
    assert "after block" not in notes

    # the worker is healthy and every pooled connection is usable again
    assert worker.proc.poll() is None
    assert worker.http("/health").status == 200
    after = poel_queue.enqueue_many(
        JobRequest("test.record", {"key": f"after{i}"}) for i in range(20)
    )
    wait_sql(
        "SELECT count(*) = 20 FROM poel.jobs WHERE state = 'succeeded' AND id = ANY(%s)",
        [after],
        timeout=30,
    )
    assert worker.stop() == 0
    figures.update(jobs=len(ids), settled_s=round(settled_s, 3))


def test_handler_blocking_the_hub_past_its_lease_is_reported_and_ends_consistently(
    serve, poel_queue, poel_conn, wait_sql, wait_for, figures
):
    """test.block burns CPU without yielding for longer than the lease: nothing renews it
    meanwhile. The watchdog thread logs 'event loop blocked'; with a second worker polling
    for expired leases, the job ends either succeeded by its first run or run again after a
    recorded 'worker lost' -- never twice succeeded, never stuck."""
    lease_ms = 1500
    first = serve(POEL_LEASE_MS=lease_ms, POEL_BLOCKING_WARN_MS=300)
    job_id = poel_queue.enqueue("test.block", {"key": "cpu", "seconds": 2.5}, max_attempts=2)
    wait_sql(
        "SELECT state = 'running' AND split_part(lease_owner, ':', 2) = %s"
        " FROM poel.jobs WHERE id = %s",
        [str(first.pid), job_id],
    )
    second = serve(POEL_LEASE_MS=lease_ms)
    blocked = wait_for(
        lambda: next(
            (e for e in first.logs if e.get("msg", "").startswith("event loop blocked")), None
        ),
        timeout=15,
        what="'event loop blocked' logged",
    )
    assert blocked["level"] == "warning"
    assert blocked["blocked_for_s"] >= 0.3
    assert "block" in blocked["stack"]  # names the handler holding the hub
    wait_sql(
        "SELECT state IN ('succeeded', 'failed') FROM poel.jobs WHERE id = %s",
        [job_id],
        timeout=30,
    )
    row = job(poel_conn, job_id)
    runs = poel_conn.execute(
        "SELECT attempt, pid FROM poel_test_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()
    # every recorded error is a lost lease, one per attempt that did not end the job
    assert len(row["errors"]) == row["attempts"] - (row["state"] == "succeeded")
    assert all(e["error"].startswith("worker lost") for e in row["errors"])
    assert len(runs) <= row["attempts"]
    # both workers survive and are healthy
    for worker in (first, second):
        assert worker.http("/health").status == 200
    other = poel_queue.enqueue("test.record", {"key": "after"})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [other])
    assert first.stop() == 0 and second.stop() == 0
    figures.update(
        lease_ms=lease_ms,
        blocked_for_s_when_reported=blocked["blocked_for_s"],
        final_state=row["state"],
        attempts=row["attempts"],
        runs=[(r["attempt"], "first" if r["pid"] == first.pid else "second") for r in runs],
    )
