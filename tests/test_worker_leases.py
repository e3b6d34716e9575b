"""A running job is held by its worker's heartbeat (issue 18): no row of a job is written
while it runs, and a rescue takes back exactly the jobs whose worker is lost or whose own
lease expired.

Before, each renewal (every third of ``POEL_LEASE_MS``) rewrote the row of every job the
worker ran: a worker holding 1,000 long jobs wrote 1,000 rows a renewal interval.
"""

from __future__ import annotations

import uuid

import pytest

from poel_host.database import connection
from poel_host.store import Store

pytestmark = pytest.mark.process

LEASE_MS = 1000


def release(conn, key: str) -> None:
    """Let the ``test.hold`` jobs with this key finish."""
    conn.execute(
        "INSERT INTO poel_test_runs (job_id, job_type, key, attempt, pid, note)"
        " VALUES (0, 'release', %s, 0, 0, 'release')",
        [key],
    )


def versions(conn, ids: list[int]) -> dict[int, str]:
    """Each job's row version (any UPDATE, HOT or not, makes a new one)."""
    rows = conn.execute(
        "SELECT id, ctid::text AS ctid, xmin::text AS xmin FROM poel.jobs WHERE id = ANY(%s)",
        [ids],
    ).fetchall()
    return {r["id"]: f"{r['ctid']}/{r['xmin']}" for r in rows}


def test_a_worker_running_many_jobs_writes_its_heartbeat_and_not_their_rows(
    serve, poel_queue, poel_conn, wait_sql, wait_for, job_lease
):
    jobs = 30
    serve(POEL_LEASE_MS=LEASE_MS, WORKER_CONCURRENCY=jobs, POEL_SHUTDOWN_TIMEOUT_MS=1000)
    ids = [poel_queue.enqueue("test.hold", {"key": "many", "seconds": 30}) for _ in range(jobs)]
    try:
        wait_sql(
            "SELECT count(*) = %s FROM poel_test_runs WHERE key = 'many' AND note = 'start'",
            [jobs],
            timeout=20,
        )
        before = versions(poel_conn, ids)
        beat = poel_conn.execute("SELECT heartbeat_at FROM poel.workers").fetchone()
        # Several heartbeats (one every third of the lease) with every job running.
        wait_for(
            lambda: poel_conn.execute(
                "SELECT heartbeat_at > %s + interval '1.5 seconds' AS later FROM poel.workers",
                [beat["heartbeat_at"]],
            ).fetchone()["later"],
            what="several heartbeats",
        )
        assert versions(poel_conn, ids) == before, "a running job's row was written"
        leases = [job_lease(poel_conn, i) for i in ids]
        assert all(r["state"] == "running" and r["lease_ahead"] for r in leases)
        assert all(r["lease_expires_at"] is None for r in leases)
    finally:
        release(poel_conn, "many")
    wait_sql(
        "SELECT count(*) = %s FROM poel.jobs WHERE state = 'succeeded' AND attempts = 1",
        [jobs],
        timeout=20,
    )


def test_a_killed_workers_jobs_are_taken_back_once_its_heartbeat_is_stale(
    serve, poel_queue, poel_conn, wait_sql
):
    env = {"POEL_LEASE_MS": LEASE_MS, "POEL_SHUTDOWN_TIMEOUT_MS": 1000}
    doomed = serve(**env, POEL_QUEUES="doomed")  # alone to claim the job
    job_id = poel_queue.enqueue("test.hold", {"key": "doomed", "seconds": 30}, queue="doomed")
    wait_sql("SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s", [job_id])
    survivor = serve(**env, POEL_QUEUES="other")
    doomed.kill()  # SIGKILL: its heartbeat stops, its row stays
    survivor.wait_log("job lease expired; worker lost", jobId=job_id, timeout=15)
    row = poel_conn.execute(
        "SELECT state::text AS state, attempts, errors, lease_owner FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 1, None)
    assert row["errors"][0]["error"].startswith("worker lost: lease held by ")
    release(poel_conn, "doomed")


def test_a_rescue_takes_the_jobs_of_lost_workers_and_expired_leases_only(poel_conn):
    def worker(owner: str, heartbeat_age_s: float, gone: bool = False) -> None:
        poel_conn.execute(
            "INSERT INTO poel.workers (owner, host, pid, version, concurrency,"
            " stale_after_ms, heartbeat_at, gone_at) VALUES (%s, 'h', 1, 't', 10, %s,"
            " now() - %s * interval '1 second', CASE WHEN %s THEN now() END)",
            [owner, LEASE_MS, heartbeat_age_s, gone],
        )

    def running(owner: str, lease_s: float | None = None) -> int:
        return poel_conn.execute(
            "INSERT INTO poel.jobs (job_type, state, attempts, lease_owner, lease_token,"
            " lease_expires_at, started_at) VALUES ('test.noop', 'running', 1, %s, %s,"
            " now() + %s * interval '1 second', now() - interval '1 minute') RETURNING id",
            [owner, str(uuid.uuid4()), lease_s],
        ).fetchone()["id"]

    worker("alive", 0.1)
    worker("stale", 5)
    worker("gone", 0.1, gone=True)
    just_claimed = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, state, attempts, lease_owner, lease_token,"
        " started_at) VALUES ('test.noop', 'running', 1, 'stale', %s, now()) RETURNING id",
        [str(uuid.uuid4())],
    ).fetchone()["id"]
    jobs = {
        "claimed just now by a worker whose heartbeat is late": just_claimed,
        "held by a live worker": running("alive"),
        "held by a live worker, own lease ahead": running("alive", 30),
        "given up by a live worker": running("alive", -1),
        "held by a stale worker": running("stale"),
        "held by a worker found gone": running("gone"),
        "held by an owner not registered": running("nobody"),
        "own lease ahead, owner not registered (run_job)": running("kit", 30),
        "own lease expired, owner not registered": running("kit", -1),
    }
    rescued = {
        r["id"]
        for r in Store("poel").recover_expired(base_ms=1000, max_ms=1000, connection=poel_conn)
    }
    taken = {name for name, job_id in jobs.items() if job_id in rescued}
    assert taken == {
        "given up by a live worker",
        "held by a stale worker",
        "held by a worker found gone",
        "held by an owner not registered",
        "own lease expired, owner not registered",
    }


def test_a_stale_worker_whose_heartbeat_is_being_written_is_not_rescued(poel_dsn, poel_conn):
    """The rescue skips a worker whose row is locked (its heartbeat is being written): the
    heartbeat and the rescue of its jobs never cross."""
    poel_conn.execute(
        "INSERT INTO poel.workers (owner, host, pid, version, concurrency, stale_after_ms,"
        " heartbeat_at) VALUES ('late', 'h', 1, 't', 10, %s, now() - interval '1 hour')",
        [LEASE_MS],
    )
    job_id = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, state, attempts, lease_owner, lease_token, started_at)"
        " VALUES ('test.noop', 'running', 1, 'late', %s, now() - interval '1 minute')"
        " RETURNING id",
        [str(uuid.uuid4())],
    ).fetchone()["id"]
    store = Store("poel")
    with connection(poel_dsn, autocommit=False) as beating:
        beating.execute("SELECT 1 FROM poel.workers WHERE owner = 'late' FOR UPDATE")
        assert store.recover_expired(base_ms=1000, max_ms=1000, connection=poel_conn) == []
        beating.rollback()
    assert [
        r["id"] for r in store.recover_expired(base_ms=1000, max_ms=1000, connection=poel_conn)
    ] == [job_id]
