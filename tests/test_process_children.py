"""The process executor's children and what they start, through real ``poel-host serve``
processes: helper programs end with their child however it is stopped, a child that dies
before its job started costs that job nothing, and children that cannot start make the
worker unhealthy until one starts. The job types are poel-testprocs'."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

pytestmark = pytest.mark.process

PROCS = "poel-testprocs"


def runs(conn, job_id: int) -> list[dict]:
    return conn.execute(
        "SELECT attempt, pid, note FROM poel_proc_runs WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()


def metric(worker, name: str) -> float:
    for line in worker.http("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


# Helper programs -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["timeout", "crash", "recycled", "shutdown", "serve killed"])
def test_a_helper_program_ends_with_its_child(serve, poel_queue, wait_sql, alive, gone_within, how):
    env = {"POEL_LOAD_PLUGINS": PROCS, "POEL_PROCESSES": 1, "POEL_SHUTDOWN_TIMEOUT_MS": 500}
    if how == "recycled":
        env["POEL_PROCESS_MAX_JOBS"] = 1
    worker = serve(**env)
    job_type, payload = {
        "timeout": ("testprocs.helper_timeout", {"seconds": 30}),
        "crash": ("testprocs.helper", {"then": "exit"}),
        "recycled": ("testprocs.helper", {"seconds": 0}),
    }.get(how, ("testprocs.helper", {"seconds": 60}))
    job_id = poel_queue.enqueue(job_type, payload)
    row = wait_sql("SELECT note FROM poel_proc_runs WHERE note LIKE 'helper %%'", timeout=20)
    helper = int(row["note"].split()[1])
    try:
        if how in ("timeout", "shutdown", "serve killed"):  # the others end at once
            assert alive(helper)
        if how in ("timeout", "crash", "recycled"):
            state = "succeeded" if how == "recycled" else "failed"
            wait_sql("SELECT state = %s FROM poel.jobs WHERE id = %s", [state, job_id], timeout=20)
        elif how == "shutdown":
            worker.signal(signal.SIGTERM)
            assert worker.wait_exit(timeout=15) == 0
        else:
            worker.kill()  # SIGKILL: serve cleans nothing up; the child must
        assert gone_within(helper), f"helper {helper} outlived its job ({how})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)


# A child that dies before its job started -------------------------------------------------


@pytest.mark.parametrize("when", ["idle", "job unread"])
def test_a_child_that_dies_before_its_job_started_costs_the_job_nothing(
    serve, poel_queue, poel_conn, wait_sql, wait_for, job, when
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    first = poel_queue.enqueue("testprocs.spin", {"key": "first", "seconds": 0})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [first])
    child = runs(poel_conn, first)[0]["pid"]

    if when == "idle":
        os.kill(child, signal.SIGKILL)
        job_id = poel_queue.enqueue("testprocs.spin_once", {"key": "next", "seconds": 0})
    else:  # the job is written to the child, which dies before reading it
        os.kill(child, signal.SIGSTOP)
        job_id = poel_queue.enqueue("testprocs.spin_once", {"key": "next", "seconds": 0})
        wait_for(lambda: metric(worker, "poel_processes_busy") == 1, what="the job sent")
        os.kill(child, signal.SIGKILL)

    wait_sql("SELECT state IN ('succeeded', 'failed') FROM poel.jobs WHERE id = %s", [job_id])
    row = job(job_id)
    assert (row["state"], row["attempts"], row["errors"]) == ("succeeded", 1, []), row
    ran = runs(poel_conn, job_id)
    assert [r["note"] for r in ran] == ["start", "end"]
    assert ran[0]["pid"] != child
    assert metric(worker, "poel_processes_crashed_total") == 0


# Children that cannot start ----------------------------------------------------------------


def test_children_that_cannot_start_make_the_worker_unhealthy_until_one_starts(
    serve, poel_queue, wait_sql, wait_for, job, tmp_path
):
    broken = tmp_path / "broken"
    broken.touch()
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1, TESTPROCS_BROKEN_IN_CHILD=str(broken))
    job_id = poel_queue.enqueue("testprocs.noop", {})

    answer = wait_for(
        lambda: (a := worker.http("/health")).status == 503 and a,
        timeout=30,
        interval=0.2,
        what="/health 503 while no child can start",
    )
    reason = answer.body["reason"]
    assert "processes" in reason
    assert "No module named 'poel_testprocs_missing_decoder'" in reason, reason
    assert "Traceback" not in reason and "\n" not in reason
    assert metric(worker, "poel_processes_start_failures_total") >= 3
    assert metric(worker, "poel_processes_start_failing") == 1
    assert job(job_id)["state"] == "queued"  # not claimed: no child to run it

    broken.unlink()  # the library is installed: the next start succeeds
    wait_for(
        lambda: worker.http("/health").status == 200,
        timeout=20,
        interval=0.2,
        what="/health 200 once a child started",
    )
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=20)
    assert metric(worker, "poel_processes_start_failing") == 0
