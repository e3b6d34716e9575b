"""Pausing and resuming against four real ``poel-host serve`` processes racing for jobs.

A pause must hold for every worker from the moment it commits (the claim reads it), and a
resume must get the paused backlog claimed at once: the workers here poll only every
minute, so only the resume's NOTIFY can wake them in time.
"""

from __future__ import annotations

from typing import Any

from poel_host.queue import JobRequest, Queue

from .conftest import wait_until

WORKERS = 4
BACKLOG = 3000
QUIET = {"POEL_POLL_INTERVAL_MS": 60_000, "WORKER_CONCURRENCY": 20}


def _committed_at(conn: Any) -> Any:
    """The database's clock now: after the statement before it committed."""
    return conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]


def _counts(conn: Any, job_type: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT state::text, count(*) AS n FROM poel.jobs WHERE job_type = %s GROUP BY 1",
        [job_type],
    ).fetchall()
    return {row["state"]: int(row["n"]) for row in rows}


def test_a_paused_type_is_claimed_by_no_worker_and_resumes_at_once(
    serve: Any, poel_queue: Queue, poel_conn: Any
) -> None:
    workers = [serve(**QUIET) for _ in range(WORKERS)]
    poel_queue.enqueue_many([JobRequest("test.noop", {"key": str(i)}) for i in range(BACKLOG)])
    # Pause while the four workers are busy claiming the backlog.
    wait_until(
        lambda: _counts(poel_conn, "test.noop").get("succeeded", 0) > 50,
        what="the workers to be claiming",
    )
    assert poel_conn.execute("SELECT poel.pause('type', 'test.noop')").fetchone()["pause"]
    paused_at = _committed_at(poel_conn)

    # Other types are still claimed after the pause (every worker is alive and claiming).
    probes = poel_queue.enqueue_many(
        [JobRequest("test.record", {"key": f"probe{i}"}) for i in range(WORKERS * 10)]
    )
    wait_until(
        lambda: _counts(poel_conn, "test.record").get("succeeded", 0) == len(probes),
        what="the probes to run",
    )
    late = poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE job_type = 'test.noop' AND started_at >= %s",
        [paused_at],
    ).fetchone()["n"]
    assert late == 0, f"{late} jobs of the paused type were claimed after the pause committed"
    left = _counts(poel_conn, "test.noop").get("queued", 0)
    assert left > 0, "the backlog ran out before the pause: nothing was tested"

    # Resume: idle workers (a minute's poll) must be woken and claim within a second.
    assert poel_queue.resume(job_type="test.noop") is True
    resumed_at = _committed_at(poel_conn)
    first = wait_until(
        lambda: poel_conn.execute(
            "SELECT min(started_at) AS t FROM poel.jobs WHERE job_type = 'test.noop'"
            " AND started_at >= %s",
            [resumed_at],
        ).fetchone()["t"],
        timeout=5,
        what="a claim after the resume",
    )
    assert (first - resumed_at).total_seconds() < 1.0
    wait_until(
        lambda: _counts(poel_conn, "test.noop") == {"succeeded": BACKLOG},
        timeout=60,
        what="the whole backlog to run",
    )
    assert all(w.proc.poll() is None for w in workers)
