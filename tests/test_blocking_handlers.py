"""Greenlet handlers that block the event loop, with real ``poel-host serve`` processes.

``test.spin`` burns pure-Python CPU without yielding: while it runs, no greenlet of its
worker runs (no claim, no rescue, no HTTP answer). Its lease must still be renewed while
the job is within its timeout (the lease keeper renews from an OS thread of its own), so
that no other worker runs it a second time; past its timeout the lease is given up, and
another worker rescues the job. The watchdog reports each block, and ``/metrics`` counts
them.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.process

LEASE_MS = 2000
# What a worker logs when a lease is in trouble: none may appear while a job is in time.
LEASE_WARNINGS = (
    "job lease lost; its outcome will not be recorded",
    "lease renewal failed",
    "job lease expired; worker lost",
    "job outcome not recorded: lease lost to another worker",
    "job outcome not recorded: lease lost or already recorded",
    "job past its timeout: lease given up, another worker can take the job",
)


def runs(conn, job_id: int) -> list[dict]:
    return conn.execute(
        "SELECT attempt, pid, note FROM poel_test_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()


def lease_warnings(*workers) -> list[dict]:
    return [e for w in workers for e in w.logs if e.get("msg") in LEASE_WARNINGS]


def blocks_logged(worker) -> list[dict]:
    return [e for e in worker.logs if e.get("msg", "").startswith("event loop blocked")]


def metric(worker, name: str) -> float:
    text = worker.http("/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


def test_a_blocking_handler_within_its_timeout_keeps_its_lease(
    serve, poel_queue, poel_conn, wait_sql, job_lease
):
    env = {"POEL_LEASE_MS": LEASE_MS, "JOB_TIMEOUT_MS": 30_000, "POEL_SHUTDOWN_TIMEOUT_MS": 1000}
    workers = [serve(**env), serve(**env)]
    job_id = poel_queue.enqueue("test.spin", {"key": "spin", "seconds": 6})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    began = time.monotonic()

    # Watch the lease from the database while the worker's hub is blocked: it must stay
    # ahead of now() and keep moving.
    expiries = set()
    deadline = began + 15
    while True:
        row = job_lease(poel_conn, job_id)
        if row["state"] != "running":
            break
        assert row["lease_ahead"], f"the lease expired during the spin: {dict(row)}"
        expiries.add(row["lease_until"])
        assert time.monotonic() < deadline, f"the job did not finish: {dict(row)}"
        time.sleep(0.05)
    spun_s = time.monotonic() - began

    final = job_lease(poel_conn, job_id)
    assert (final["state"], final["attempts"], final["errors"]) == ("succeeded", 1, [])
    ran = runs(poel_conn, job_id)
    assert [(r["attempt"], r["note"]) for r in ran] == [(1, "start"), (1, "end")]
    spinner = next(w for w in workers if w.pid == ran[0]["pid"])
    # Renewed all along (every third of the lease: about nine times in six seconds).
    assert len(expiries) >= 6, sorted(expiries)
    # The hub really was blocked, and nobody's lease was in trouble.
    assert blocks_logged(spinner)
    assert lease_warnings(*workers) == []
    print(  # figures, shown with pytest -s
        "figures",
        dict(
            spun_s=round(spun_s, 2),
            distinct_lease_expiries_seen=len(expiries),
            renewals=metric(spinner, "poel_lease_renewals_total"),
            blocked_for_s_when_reported=blocks_logged(spinner)[0]["blocked_for_s"],
        ),
    )


def test_b_past_its_timeout_a_blocking_handler_gives_its_lease_up(
    serve, poel_queue, poel_conn, wait_sql, wait_for, job_lease
):
    env = {"POEL_LEASE_MS": LEASE_MS, "JOB_TIMEOUT_MS": 2000, "POEL_SHUTDOWN_TIMEOUT_MS": 1000}
    workers = [serve(**env), serve(**env)]
    # Its first attempt spins 8 s, well past its 2 s timeout; a second attempt does not spin.
    job_id = poel_queue.enqueue("test.spin", {"key": "late", "seconds": 8, "attempts": 1})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    began = time.monotonic()
    spinner_pid = runs(poel_conn, job_id)[0]["pid"]
    spinner = next(w for w in workers if w.pid == spinner_pid)
    rescuer = next(w for w in workers if w is not spinner)

    # While the first worker still spins, the second rescues the job and runs it.
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=12)
    rescued_s = time.monotonic() - began
    final = job_lease(poel_conn, job_id)
    assert final["attempts"] == 2
    assert len(final["errors"]) == 1 and final["errors"][0]["error"].startswith("worker lost")
    assert rescuer.find_log("job lease expired; worker lost", jobId=job_id)
    ran = runs(poel_conn, job_id)
    assert (ran[0]["attempt"], ran[0]["pid"]) == (1, spinner.pid)
    assert [(r["attempt"], r["pid"], r["note"]) for r in ran[1:]] == [
        (2, rescuer.pid, "start"),
        (2, rescuer.pid, "end"),
    ]

    # When the spin ends, the first worker's late outcome is not recorded over the success.
    late = wait_for(
        lambda: next(
            (
                e
                for e in spinner.logs
                if e.get("msg", "").startswith("job outcome not recorded")
                and e.get("jobId") == job_id
            ),
            None,
        ),
        timeout=15,
        what="the first worker's outcome dropped",
    )
    after = job_lease(poel_conn, job_id)
    assert (after["state"], after["attempts"], after["errors"]) == (
        "succeeded",
        2,
        final["errors"],
    )
    given_up = [e for e in spinner.logs if e.get("msg", "").startswith("job past its timeout")]
    assert len(given_up) == 1 and given_up[0]["jobId"] == job_id
    assert given_up[0]["level"] == "warning"
    stack = blocks_logged(spinner)[0]["stack"]
    assert "spin" in stack  # the watchdog names the handler holding the hub
    assert metric(spinner, "poel_leases_given_up_total") == 1
    print(  # figures, shown with pytest -s
        "figures",
        dict(
            rescued_after_s=round(rescued_s, 2),
            overdue_when_given_up_s=given_up[0]["overdue_s"],
            late_outcome=late["msg"],
        ),
    )


def test_c_metrics_count_event_loop_blocks(serve, poel_queue, wait_sql, wait_for):
    worker = serve(POEL_LEASE_MS=LEASE_MS, POEL_BLOCKING_WARN_MS=300)
    assert metric(worker, "poel_event_loop_blocks_total") == 0
    assert metric(worker, "poel_lease_renewals_total") == 0  # no job held yet
    job_id = poel_queue.enqueue("test.spin", {"key": "count", "seconds": 3})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id])
    blocks = metric(worker, "poel_event_loop_blocks_total")
    renewals = metric(worker, "poel_lease_renewals_total")
    assert blocks >= 1
    wait_for(lambda: len(blocks_logged(worker)) == blocks, what="one warning a block counted")
    # Held for the 3 s of the spin: renewed every 0.67 s although the hub was blocked.
    assert renewals >= 3
    assert metric(worker, "poel_lease_renewal_failures_total") == 0
    print(  # figures, shown with pytest -s
        "figures",
        dict(event_loop_blocks=blocks, renewals=renewals),
    )


def test_d_a_renewal_connection_lost_during_the_block_is_replaced_off_the_hub(
    serve, poel_queue, poel_conn, wait_sql, job_lease
):
    """The lease thread opens its connections itself: one the server ended while the hub
    was blocked is replaced at once, by the thread alone."""
    worker = serve(POEL_LEASE_MS=LEASE_MS, JOB_TIMEOUT_MS=30_000)
    job_id = poel_queue.enqueue("test.spin", {"key": "cut", "seconds": 4})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    began = time.monotonic()
    ended = None
    while True:
        row = job_lease(poel_conn, job_id)
        if row["state"] != "running":
            break
        assert row["lease_ahead"], f"the lease expired during the spin: {dict(row)}"
        if ended is None and time.monotonic() - began > 1:
            ended = [
                r["pid"]
                for r in poel_conn.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name = 'poel-host:leases'"
                )
            ]
        assert time.monotonic() < began + 15, f"the job did not finish: {dict(row)}"
        time.sleep(0.05)
    assert ended is not None and len(ended) == 1
    # The lease thread connected again (while the hub was still blocked: see above).
    now = poel_conn.execute(
        "SELECT array_agg(pid) AS pids FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'poel-host:leases'"
    ).fetchone()["pids"]
    assert now and ended[0] not in now
    final = job_lease(poel_conn, job_id)
    assert (final["state"], final["attempts"], final["errors"]) == ("succeeded", 1, [])
    assert blocks_logged(worker)
    # At most a renewal that was in flight when its connection ended failed (and was retried).
    warnings = lease_warnings(worker)
    assert {e["msg"] for e in warnings} <= {"lease renewal failed"} and len(warnings) <= 1
