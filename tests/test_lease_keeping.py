"""Leases of running jobs, watched from the database while ``poel-host serve`` runs them.

A running job is held by its worker's heartbeat in the registry (``workers.heartbeat_at``
plus the worker's ``stale_after_ms``), not by a lease of its own. That lease must stay
ahead of ``now()`` for as long as its worker runs the job, whatever else the worker does
meanwhile (here: pruning finished jobs that take seconds to delete); a heartbeat that fell
behind with nobody taking the job (a blip) still holds its attempts, and an attempt whose
job was rescued is not held any more.
"""

from __future__ import annotations

import time

import pytest

from poel_host.database import connection

pytestmark = pytest.mark.process

LEASE_MS = 1000
OLD_ROWS = 2000  # two prune batches of 1000 rows, each about 2 s with the trigger below

SLOW_DELETE = """
CREATE FUNCTION public.poel_test_slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.002);
    RETURN OLD;
END $$;
CREATE TRIGGER poel_test_slow_delete BEFORE DELETE ON poel.jobs
    FOR EACH ROW EXECUTE FUNCTION public.poel_test_slow_delete();
"""


def release(conn, key: str) -> None:
    """Let the ``test.hold`` job with this key finish."""
    conn.execute(
        "INSERT INTO poel_test_runs (job_id, job_type, key, attempt, pid, note)"
        " VALUES (0, 'release', %s, 0, 0, 'release')",
        [key],
    )


def test_a_long_prune_does_not_stop_lease_renewal(
    serve, poel_dsn, poel_queue, poel_conn, job_lease
):
    # Finished jobs past their retention, each slow to delete.
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, attempts, finished_at, created_at)"
        " SELECT 'test.noop', '{}', 'succeeded', 1, now() - interval '2 days',"
        " now() - interval '2 days' FROM generate_series(1, %s)",
        [OLD_ROWS],
    )
    poel_conn.execute(SLOW_DELETE)
    # The trigger really makes deleting slow (checked on rows rolled back at once).
    with connection(poel_dsn, autocommit=False) as probe:
        began = time.monotonic()
        probe.execute(
            "DELETE FROM poel.jobs WHERE id IN (SELECT id FROM poel.jobs WHERE"
            " state = 'succeeded' LIMIT 100)"
        )
        assert time.monotonic() - began >= 0.15
        probe.rollback()

    # Queued before the worker starts, so that it runs from the first moment on.
    job_id = poel_queue.enqueue("test.hold", {"key": "held", "seconds": 30})
    serve(POEL_LEASE_MS=LEASE_MS, POEL_RETAIN_SUCCEEDED_HOURS=1, POEL_SHUTDOWN_TIMEOUT_MS=1000)
    try:
        _watch_through_the_prune(poel_conn, job_id, job_lease)
    finally:
        release(poel_conn, "held")  # at once, if the test failed

    final = job_lease(poel_conn, job_id)
    assert (final["state"], final["attempts"], final["errors"]) == ("succeeded", 1, [])


def _watch_through_the_prune(poel_conn, job_id: int, job_row) -> None:
    """Poll the held job until it finishes: its lease must stay ahead of now() all along.
    Once the prune is over and the lease was renewed more than once since, release it."""
    old_rows = (
        "SELECT count(*) AS n FROM poel.jobs WHERE state = 'succeeded'"
        " AND finished_at < now() - interval '1 day'"
    )
    deadline = time.monotonic() + 25
    lease_when_pruned = None
    released = False
    while True:
        row = job_row(poel_conn, job_id)
        left = poel_conn.execute(old_rows).fetchone()["n"]
        if row["state"] == "running":
            assert row["lease_ahead"], (
                f"job {job_id}'s lease expired while its worker ran it: lease until"
                f" {row['lease_until']}, now {row['now']}, {left} of {OLD_ROWS}"
                " finished jobs not yet pruned"
            )
        elif row["state"] != "queued":
            break  # finished
        if lease_when_pruned is None and left == 0:
            assert row["state"] == "running", "the job must still run when the prune ends"
            lease_when_pruned = row["lease_until"]
        if (
            not released
            and lease_when_pruned is not None
            and row["lease_until"] is not None
            and (row["lease_until"] - lease_when_pruned).total_seconds() > LEASE_MS / 1000
        ):
            # Renewed more than once since the prune ended: the job may finish now.
            release(poel_conn, "held")
            released = True
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: job {dict(row)}, {left} old rows left, released={released}")
        time.sleep(0.05)


def test_an_expired_lease_nobody_took_is_kept_and_its_outcome_recorded(
    serve, poel_dsn, poel_queue, poel_conn, wait_sql, wait_for, job_lease
):
    """A database blip longer than the lease: the worker's heartbeat is late, but no
    rescue ran, so the attempt's token is still the job's: the worker's next heartbeat
    holds the job again and its outcome is recorded, instead of its own finished work
    being dropped as lost and the job run again."""
    serve(POEL_LEASE_MS=LEASE_MS, POEL_SHUTDOWN_TIMEOUT_MS=1000)
    job_id = poel_queue.enqueue("test.hold", {"key": "held", "seconds": 30})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    try:
        _expire_while_locked(poel_dsn, poel_conn, job_id, wait_for)
        row = wait_for(
            lambda: (r := job_lease(poel_conn, job_id))["lease_ahead"] and r,
            what="the late heartbeat written again by its worker",
        )
        assert (row["state"], row["attempts"]) == ("running", 1)
    finally:
        release(poel_conn, "held")
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=15)
    final = job_lease(poel_conn, job_id)
    assert (final["attempts"], final["errors"]) == (1, [])


def test_an_attempt_rescued_meanwhile_is_not_renewed_and_its_outcome_not_recorded(
    serve, poel_queue, poel_conn, wait_sql, job_lease
):
    """Once another worker's rescue took the job (its token changed), the old attempt's
    renewal and outcome match nothing: the job's fate is the new attempt's."""
    host = serve(POEL_LEASE_MS=LEASE_MS, POEL_SHUTDOWN_TIMEOUT_MS=1000)
    job_id = poel_queue.enqueue("test.hold", {"key": "held", "seconds": 30})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    # What a rescue does, with the job kept from being claimed again meanwhile.
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'queued', run_at = now() + interval '1 hour',"
        " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = %s",
        [job_id],
    )
    host.wait_log("job lease lost; its outcome will not be recorded", jobId=job_id)
    release(poel_conn, "held")
    host.wait_log("job outcome not recorded: lease lost or already recorded", jobId=job_id)
    row = job_lease(poel_conn, job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 1, None)


def _expire_while_locked(poel_dsn: str, poel_conn, job_id: int, wait_for) -> None:
    """Make the worker's heartbeat late while its next one waits for the registry row."""
    # The heartbeat falls behind while the row is locked by this transaction: the worker's
    # next heartbeat waits for the lock (and any rescue skips the locked row), so when the
    # transaction commits the heartbeat meets a lease that has expired already.
    with connection(poel_dsn, autocommit=False) as locker:
        locker.execute(
            "UPDATE poel.workers SET heartbeat_at = now() - interval '1 hour'"
            " WHERE owner = (SELECT lease_owner FROM poel.jobs WHERE id = %s) RETURNING owner",
            [job_id],
        ).fetchone()
        me = locker.info.backend_pid

        def heartbeat_waiting() -> bool:
            return bool(
                poel_conn.execute(
                    "SELECT count(*) > 0 AS w FROM pg_stat_activity"
                    " WHERE datname = current_database() AND %s = ANY(pg_blocking_pids(pid))",
                    [me],
                ).fetchone()["w"]
            )

        wait_for(heartbeat_waiting, what="the worker's heartbeat to wait for its row")
        locker.commit()
