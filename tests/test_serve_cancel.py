"""Cancelling a running job under real ``poel-host serve`` processes: four of them share
the table, and whichever holds the job stops it within a second of ``Queue.cancel``, on
every executor: a greenlet's query is cancelled on the server, a thread's handler sees
``ctx.cancelled``, a process job's child is stopped with its process group (its helper
program too). The job ends ``cancelled`` with its one attempt, and is not run again."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from poel_host import JobRequest
from tests.conftest import process_alive, wait_until

pytestmark = pytest.mark.process

PLUGINS = "poel-testprocs,poel-teststeer"
EXECUTORS = ("greenlet", "thread", "process")


def started(conn: Any, job_id: int) -> str | None:
    row = conn.execute(
        "SELECT note FROM poel_proc_runs WHERE job_id = %s AND note LIKE 'start%%'", [job_id]
    ).fetchone()
    return None if row is None else str(row["note"])


def state(conn: Any, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = conn.execute(
        "SELECT state, attempts, cancel_requested, lease_token FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()
    return found


def test_a_running_job_is_cancelled_within_a_second_on_each_executor(
    serve: Any, poel_queue: Any, poel_conn: Any
) -> None:
    workers = [serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=1) for _ in range(4)]
    ids = dict(
        zip(
            EXECUTORS,
            poel_queue.enqueue_many(
                [JobRequest(f"steer.wait.{e}", {"key": e, "seconds": 60}) for e in EXECUTORS]
            ),
            strict=True,
        )
    )
    notes = {e: wait_until(lambda e=e: started(poel_conn, ids[e]), timeout=30) for e in EXECUTORS}
    for executor, job_id in ids.items():
        asked = time.monotonic()
        assert poel_queue.cancel(job_id) is True
        wait_until(
            lambda job_id=job_id: state(poel_conn, job_id)["state"] == "cancelled",
            timeout=1.0,
            interval=0.01,
            what=f"the {executor} job cancelled",
        )
        took = time.monotonic() - asked
        assert took < 1.0, (executor, took)
        row = state(poel_conn, job_id)
        assert (row["attempts"], row["lease_token"]) == (1, None)

    # The greenlet's query no longer runs on the server.
    wait_until(
        lambda: (
            not poel_conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%steer.wait%%pg_sleep%%'"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        ),
        timeout=5,
        what="pg_sleep cancelled on the server",
    )
    # The process job's child and its helper program are gone.
    helper = int(re.search(r"helper=(\d+)", notes["process"]).group(1))  # type: ignore[union-attr]
    wait_until(lambda: not process_alive(helper), timeout=10, what="the helper program gone")
    # Nothing ran again, and no handler went on to its end.
    runs = poel_conn.execute(
        "SELECT count(*) AS n FROM poel_proc_runs WHERE key IN ('greenlet', 'thread', 'process')"
    ).fetchone()["n"]
    assert runs == 3
    stopped = {
        executor: [w for w in workers if w.find_log("job cancelled while running", jobId=job_id)]
        for executor, job_id in ids.items()
    }
    assert all(len(found) == 1 for found in stopped.values()), stopped  # by its holder alone


def test_a_worker_that_missed_the_notification_stops_the_job_at_its_heartbeat(
    serve: Any, poel_queue: Any, poel_conn: Any
) -> None:
    # The flag alone, with no NOTIFY: the lease keeper's heartbeat (every 0.5 s with a
    # lease of 1.5 s) reports it.
    serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_THREADS=1, POEL_LEASE_MS=1500)
    job_id = poel_queue.enqueue("steer.wait.thread", {"key": "t", "seconds": 60})
    wait_until(lambda: started(poel_conn, job_id), timeout=30)
    poel_conn.execute("UPDATE poel.jobs SET cancel_requested = true WHERE id = %s", [job_id])
    wait_until(lambda: state(poel_conn, job_id)["state"] == "cancelled", timeout=3)
    assert state(poel_conn, job_id)["attempts"] == 1


def test_cancelling_a_queued_job_is_at_once_and_a_finished_one_is_refused(
    poel_queue: Any, poel_conn: Any
) -> None:
    queued = poel_queue.enqueue("steer.wait.greenlet", {"key": "q"}, delay=3600)
    assert poel_queue.cancel(queued) is True
    assert state(poel_conn, queued)["state"] == "cancelled"
    assert poel_queue.cancel(queued) is False  # finished
    assert poel_queue.cancel(10**12) is False  # unknown


def test_a_job_asked_to_stop_is_never_queued_again(poel_queue: Any, poel_conn: Any) -> None:
    # A running job whose cancel was requested, then handed back (a shutdown), snoozed or
    # rescued: every path that queues it again ends it cancelled instead (the trigger).
    job_id = poel_queue.enqueue("steer.wait.greenlet", {"key": "r"})
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'running', attempts = 1, lease_token = gen_random_uuid()"
        " WHERE id = %s",
        [job_id],
    )
    assert poel_queue.cancel(job_id) is True  # running: requested
    assert state(poel_conn, job_id)["cancel_requested"] is True
    poel_conn.execute("UPDATE poel.jobs SET state = 'queued' WHERE id = %s", [job_id])
    row = poel_conn.execute(
        "SELECT state, finished_at FROM poel.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert row["state"] == "cancelled" and row["finished_at"] is not None
    # An operator's retry queues it again, for real.
    assert poel_queue.retry(job_id) is True
    assert state(poel_conn, job_id)["state"] == "queued"


def test_the_cli_says_a_running_job_was_asked_to_stop(
    poel_cli: Any, poel_dsn: str, poel_queue: Any, poel_conn: Any
) -> None:
    job_id = poel_queue.enqueue("steer.wait.greenlet", {"key": "c"})
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'running', attempts = 1, lease_token = gen_random_uuid()"
        " WHERE id = %s",
        [job_id],
    )
    done = poel_cli("jobs", "cancel", str(job_id), DATABASE_URL=poel_dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"job {job_id} is running: asked to stop (it ends cancelled)"
    assert state(poel_conn, job_id)["cancel_requested"] is True
    poel_conn.execute("UPDATE poel.jobs SET state = 'succeeded' WHERE id = %s", [job_id])
    refused = poel_cli("jobs", "cancel", str(job_id), DATABASE_URL=poel_dsn)
    assert refused.returncode != 0
    assert "not queued or running" in refused.stderr
