"""Chaos: workers killed mid-run (SIGKILL) and frozen past their lease (SIGSTOP).

Every run of a job is recorded in ``poel_test_runs`` with the pid that ran it, so the tests
count executions exactly: a job may run twice only where its first worker died (or froze)
while holding it, and nothing is lost.
"""

from __future__ import annotations

import signal
import statistics
import time

import pytest

from poel_host import JobRequest

pytestmark = pytest.mark.chaos

JOBS = 5000
LEASE_MS = 2000


def states(conn) -> dict[str, int]:
    rows = conn.execute("SELECT state::text AS state, count(*) AS n FROM poel.jobs GROUP BY 1")
    return {r["state"]: r["n"] for r in rows}


def owned_by(conn, pid: int) -> list[dict]:
    """Running jobs whose lease a process holds (lease_owner is host:pid:uuid), with when
    that lease expires: its own expiry if it has one, else its worker's heartbeat plus
    the worker's lease (frozen by a kill)."""
    return conn.execute(
        "SELECT j.id, coalesce(j.lease_expires_at,"
        "  w.heartbeat_at + w.stale_after_ms * interval '1 millisecond') AS lease_expires_at"
        " FROM poel.jobs AS j LEFT JOIN poel.workers AS w ON w.owner = j.lease_owner"
        " WHERE j.state = 'running' AND split_part(j.lease_owner, ':', 2) = %s",
        [str(pid)],
    ).fetchall()


def running_handlers(conn, pid: int) -> int:
    """Jobs this process holds whose handler has started in this attempt."""
    return conn.execute(
        "SELECT count(*) AS n FROM poel.jobs AS j JOIN poel_test_runs AS r"
        " ON r.job_id = j.id AND r.attempt = j.attempts AND r.pid = %s"
        " WHERE j.state = 'running' AND split_part(j.lease_owner, ':', 2) = %s",
        [pid, str(pid)],
    ).fetchone()["n"]


def test_three_workers_drain_5000_jobs_while_one_is_killed_twice(
    serve, poel_queue, poel_conn, wait_for, kill_mid_job, figures
):
    env = {"POEL_LEASE_MS": LEASE_MS, "WORKER_CONCURRENCY": 10}
    workers = [serve(**env) for _ in range(3)]
    started = time.monotonic()
    ids = poel_queue.enqueue_many(
        JobRequest("test.work", {"key": f"k{i}", "seconds": 0.02}) for i in range(JOBS)
    )
    assert len(set(ids)) == JOBS

    killed: list[int] = []
    held_at_kill: dict[int, object] = {}  # job id -> its lease expiry, frozen by the kill
    mid_handler = 0
    for fraction in (0.25, 0.5):
        wait_for(
            lambda f=fraction: states(poel_conn).get("succeeded", 0) >= JOBS * f,
            timeout=60,
            what=f"{fraction:.0%} of the jobs done",
        )
        victim = workers[0]
        kill_mid_job(victim, lambda v=victim: running_handlers(poel_conn, v.pid))
        held = owned_by(poel_conn, victim.pid)
        assert held, "the killed worker held no job"
        held_at_kill.update({r["id"]: r["lease_expires_at"] for r in held})
        mid_handler += poel_conn.execute(
            "SELECT count(DISTINCT job_id) AS n FROM poel_test_runs"
            " WHERE pid = %s AND job_id = ANY(%s)",
            [victim.pid, [r["id"] for r in held]],
        ).fetchone()["n"]
        killed.append(victim.pid)
        workers[0] = serve(**env)

    wait_for(
        lambda: states(poel_conn).get("succeeded", 0) == JOBS,
        timeout=120,
        what="every job succeeded",
    )
    drained_s = time.monotonic() - started
    assert states(poel_conn) == {"succeeded": JOBS}

    runs = {
        r["job_id"]: r["pids"]
        for r in poel_conn.execute(
            "SELECT job_id, array_agg(pid ORDER BY id) AS pids FROM poel_test_runs"
            " WHERE note = 'start' GROUP BY job_id"
        )
    }
    assert set(runs) == set(ids), "a job succeeded without running, or a stray run"
    duplicates = {job_id: pids for job_id, pids in runs.items() if len(pids) > 1}
    for job_id, pids in duplicates.items():
        # every run but the last was cut short by a kill
        assert set(pids[:-1]) <= set(killed), (job_id, pids, killed)
        assert job_id in held_at_kill, (job_id, pids)

    rows = {
        r["id"]: r
        for r in poel_conn.execute(
            "SELECT id, attempts, errors, started_at,"
            " (errors -> -1 ->> 'at')::timestamptz AS requeued_at"
            " FROM poel.jobs WHERE attempts > 1"
        )
    }
    # Only the jobs a killed worker held were attempted again, each losing one attempt
    # per kill, recorded as "worker lost".
    assert set(rows) <= set(held_at_kill)
    for row in rows.values():
        assert len(row["errors"]) == row["attempts"] - 1
        assert all(e["error"].startswith("worker lost") for e in row["errors"])
    recovered = [
        (
            (rows[i]["requeued_at"] - expiry).total_seconds(),
            (rows[i]["started_at"] - expiry).total_seconds(),
        )
        for i, expiry in held_at_kill.items()
        if i in rows
    ]
    assert len(rows) == len(held_at_kill)  # every held job was recovered and re-run
    requeue = [r[0] for r in recovered]
    reclaim = [r[1] for r in recovered]
    # Rescues run every lease/3 on each worker. When a rescued job runs again also waits
    # for its backoff and for the backlog enqueued before it (claims take the oldest
    # run_at first), so it is a figure, not a bound.
    assert max(requeue) < 2.5, (requeue, reclaim)

    for worker in workers:
        assert worker.stop() == 0

    figures.update(
        jobs=JOBS,
        workers=3,
        lease_ms=LEASE_MS,
        kills=len(killed),
        jobs_held_by_killed_workers=len(held_at_kill),
        jobs_mid_handler_at_kill=mid_handler,
        jobs_run_twice=len(duplicates),
        extra_runs=sum(len(p) - 1 for p in duplicates.values()),
        lease_expiry_to_requeue_s={
            "median": _r(statistics.median(requeue)),
            "max": _r(max(requeue)),
        },
        lease_expiry_to_reclaim_s={
            "median": _r(statistics.median(reclaim)),
            "max": _r(max(reclaim)),
        },
        drain_s=_r(drained_s),
    )


def test_frozen_worker_does_not_overwrite_the_new_owners_outcome(
    serve, poel_queue, poel_conn, wait_sql, wait_for, figures
):
    """A worker frozen (SIGSTOP) past its lease loses the job to another worker; resumed,
    its late outcome (the first attempt fails) is not recorded over the success."""
    env = {"POEL_LEASE_MS": LEASE_MS}
    first = serve(**env)
    job_id = poel_queue.enqueue("test.stall", {"key": "frozen", "seconds": 1.0})
    wait_sql("SELECT count(*) = 1 FROM poel_test_runs WHERE job_id = %s", [job_id])
    first.signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        second = serve(**env)
        wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=15)
        taken_over_s = time.monotonic() - frozen
    finally:
        first.signal(signal.SIGCONT)
    resumed = time.monotonic()

    def lease_lost() -> list[dict]:
        return [e for e in first.logs if "lease lost" in e.get("msg", "")]

    wait_for(lambda: any("not recorded" in e["msg"] for e in lease_lost()), timeout=10)
    lost_lines = lease_lost()
    assert all(e.get("jobId") == job_id for e in lost_lines), lost_lines
    # the first worker's own view: its attempt ended in a (late) failure, not written
    retry = first.find_log("job retry scheduled", jobId=job_id)
    assert retry is not None and retry["error"] == "RuntimeError: first attempt's late failure"

    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("succeeded", 2, None)
    [lost] = row["errors"]
    assert lost["attempt"] == 1 and lost["error"].startswith("worker lost")
    assert f":{first.pid}:" in lost["error"]
    assert row["last_error"] == lost["error"]
    runs = poel_conn.execute(
        "SELECT attempt, pid FROM poel_test_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()
    assert [(r["attempt"], r["pid"]) for r in runs] == [(1, first.pid), (2, second.pid)]

    # the resumed worker is healthy and runs jobs again
    assert first.http("/health").status == 200
    after = poel_queue.enqueue("test.record", {"key": "after"})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [after])
    assert first.stop() == 0
    assert second.stop() == 0
    # the row did not change after the resumed worker wrote its outcomes and stopped
    final = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert final == row
    figures.update(
        lease_ms=LEASE_MS,
        frozen_to_taken_over_and_succeeded_s=_r(taken_over_s),
        resumed_to_lease_lost_logged_s=_r(time.monotonic() - resumed),
        lease_lost_log_lines=[e["msg"] for e in lost_lines],
    )


def _r(value: float) -> float:
    return round(value, 3)
