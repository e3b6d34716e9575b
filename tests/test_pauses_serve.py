"""Pausing and resuming against four real ``poel-host serve`` processes racing for jobs.

A pause must hold for every worker from the moment it commits (the claim reads it), and a
resume must get the paused backlog claimed at once: the workers here poll only every
minute, so only the resume's NOTIFY can wake them in time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from poel_host.queue import JobRequest, Queue

from .conftest import wait_until

pytestmark = pytest.mark.process

WORKERS = 4
BACKLOG = 3000
QUIET = {"POEL_POLL_INTERVAL_MS": 60_000, "WORKER_CONCURRENCY": 20}
# What is paused, and jobs that must still run meanwhile: another type, or the same type
# in another queue.
CASES = {
    "type": (("type", "test.noop"), JobRequest("test.record", queue="bulk")),
    "queue": (("queue", "bulk"), JobRequest("test.noop", queue="default")),
}


def _at(conn: Any) -> Any:
    """The database's clock now: after the statement before it committed."""
    return conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]


def _count(conn: Any, where: str, *params: Any) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM poel.jobs WHERE {where}", params).fetchone()[
        "n"
    ]


BACKLOG_JOBS = "job_type = 'test.noop' AND queue = 'bulk'"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pause_holds_on_every_worker_and_a_resume_wakes_them(
    serve: Any, poel_queue: Queue, poel_conn: Any, case: str
) -> None:
    (kind, name), probe = CASES[case]
    workers = [serve(**QUIET) for _ in range(WORKERS)]
    poel_queue.enqueue_many(
        [JobRequest("test.noop", {"key": str(i)}, queue="bulk") for i in range(BACKLOG)]
    )
    # Pause while the four workers are busy claiming the backlog.
    wait_until(
        lambda: _count(poel_conn, BACKLOG_JOBS + " AND state = 'succeeded'") > 50,
        what="the workers to be claiming",
    )
    assert poel_conn.execute("SELECT poel.pause(%s, %s)", [kind, name]).fetchone()["pause"]
    paused_at = _at(poel_conn)

    # Other jobs are still claimed after the pause: every worker is alive and claiming.
    probes = poel_queue.enqueue_many(
        [
            JobRequest(probe.type, {"key": f"probe{i}"}, queue=probe.queue)
            for i in range(WORKERS * 10)
        ]
    )
    wait_until(
        lambda: _count(poel_conn, "id = ANY(%s) AND state = 'succeeded'", probes) == len(probes),
        what="the probes to run",
    )
    late = _count(poel_conn, BACKLOG_JOBS + " AND started_at >= %s", paused_at)
    assert late == 0, f"{late} paused jobs were claimed after the pause committed"
    assert _count(poel_conn, BACKLOG_JOBS + " AND state = 'queued'") > 0, "nothing was paused"

    # Resume: idle workers (a minute's poll) must be woken and claim within a second.
    resumed = poel_queue.resume(**{"job_type" if kind == "type" else "queue": name})
    assert resumed is True
    resumed_at = _at(poel_conn)
    first = wait_until(
        lambda: poel_conn.execute(
            f"SELECT min(started_at) AS t FROM poel.jobs WHERE {BACKLOG_JOBS} AND started_at >= %s",
            [resumed_at],
        ).fetchone()["t"],
        timeout=5,
        what="a claim after the resume",
    )
    assert (first - resumed_at).total_seconds() < 1.0
    wait_until(
        lambda: _count(poel_conn, BACKLOG_JOBS + " AND state = 'succeeded'") == BACKLOG,
        timeout=60,
        what="the whole backlog to run",
    )
    assert all(w.proc.poll() is None for w in workers)
    # Nothing is logged a claim about the pause: a paused backlog is just no jobs.
    said = [log for w in workers for log in w.logs if "paus" in json.dumps(log).lower()]
    assert said == []


def test_a_paused_scheduled_type_is_still_enqueued_and_waits(serve, poel_queue, poel_conn):
    poel_queue.pause(job_type="test.tick", reason="maintenance")
    worker = serve(POEL_TEST_TICK_SCHEDULE="* * * * * *")  # a slot a second
    wait_until(
        lambda: _count(poel_conn, "job_type = 'test.tick'") >= 3,
        timeout=20,
        what="three slots enqueued",
    )
    assert _count(poel_conn, "job_type = 'test.tick' AND state <> 'queued'") == 0
    poel_queue.resume(job_type="test.tick")
    wait_until(
        lambda: _count(poel_conn, "job_type = 'test.tick' AND state = 'succeeded'") >= 3,
        what="the waiting slots to run once resumed",
    )
    assert worker.proc.poll() is None
