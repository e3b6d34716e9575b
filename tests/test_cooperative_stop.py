"""A handler that stops when the worker asks it to (``ctx.wait_cancelled`` then
``ctx.check_cancelled``) at shutdown is handed back like one the worker interrupted: the
attempt does not count, and the job is not failed."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.process


def test_a_job_that_stops_when_cancelled_at_shutdown_is_handed_back(
    serve, poel_queue, poel_conn, wait_sql
):
    worker = serve(POEL_SHUTDOWN_TIMEOUT_MS=500)
    # max_attempts=1: a counted attempt would fail the job for good.
    job_id = poel_queue.enqueue("test.cooperative", {"key": "c"})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )

    assert worker.stop() == 0
    row = poel_conn.execute(
        "SELECT state::text AS state, attempts, last_error, errors, lease_owner"
        " FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()
    assert (row["state"], row["attempts"], row["last_error"], row["errors"]) == (
        "queued",
        0,
        None,
        [],
    ), f"job {job_id} after a cooperative stop at shutdown: {dict(row)}"
    assert row["lease_owner"] is None
    notes = poel_conn.execute(
        "SELECT note FROM poel_test_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()
    assert [n["note"] for n in notes] == ["start"]  # it did stop when asked
