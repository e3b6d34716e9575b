"""The process executor, through real ``poel-host serve`` processes and their children:
CPU-heavy jobs keep their leases and the worker its health; hard timeouts, crashes,
recycling, shutdown and a killed serve. The job types are poel-testprocs'."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

PROCS = "poel-testprocs"
HEALTH_PROBE = Path(__file__).with_name("health_probe.py")


def runs(conn, job_id: int | None = None) -> list[dict]:
    query = "SELECT job_id, key, attempt, pid, warm, note FROM poel_proc_runs"
    if job_id is None:
        return conn.execute(query + " ORDER BY id").fetchall()
    return conn.execute(query + " WHERE job_id = %s ORDER BY id", [job_id]).fetchall()


def wait_state(wait_sql, job_id: int, state: str, timeout: float = 20.0) -> None:
    wait_sql("SELECT state = %s FROM poel.jobs WHERE id = %s", [state, job_id], timeout=timeout)


def test_cpu_heavy_jobs_run_once_and_the_workers_stay_healthy(
    serve, poel_queue, poel_conn, wait_sql, wait_for, job
):
    env = {"POEL_LOAD_PLUGINS": PROCS, "POEL_LEASE_MS": 2000, "POEL_PROCESSES": 1}
    workers = [serve(**env), serve(**env)]
    ids = [poel_queue.enqueue("testprocs.spin", {"key": str(i), "seconds": 6}) for i in range(4)]
    # Measured while every child computes (the claim), not while the children's
    # interpreters start up beside serve, before they lower their priority.
    wait_sql("SELECT count(*) >= 2 FROM poel_proc_runs WHERE note = 'start'", timeout=30)

    probe = subprocess.Popen(
        [sys.executable, "-I", "-S", str(HEALTH_PROBE), *(w.url("/health") for w in workers)],
        stdout=subprocess.PIPE,
    )
    try:
        finished = "SELECT count(*) AS n FROM poel.jobs WHERE state = 'succeeded' AND id = ANY(%s)"
        wait_for(
            lambda: poel_conn.execute(finished, [ids]).fetchone()["n"] == len(ids),
            timeout=60,
            interval=0.2,  # one kept connection, seldom: the probe's figures are serve's
            what="the CPU-heavy jobs to finish",
        )
    finally:
        probe.terminate()
        samples = json.loads(probe.communicate(timeout=10)[0])
    assert len(samples) > 40, samples  # probed throughout: every ~0.1 s for 12 s and more
    assert {status for _, status, _ in samples} == {200}, samples
    # Starved by its children, serve would answer in seconds; nineteen answers in twenty
    # within 100 ms say it is not, and one slow answer of a shared machine's scheduler
    # (117 ms once, beside other tests) does not fail the test.
    took = sorted(seconds for _, _, seconds in samples)
    typical, slowest = took[int(len(took) * 0.95)], took[-1]
    assert typical < 0.1, f"/health took {typical * 1000:.0f} ms (p95) while children computed"
    assert slowest < 1.0, f"/health took {slowest * 1000:.0f} ms while children computed"

    for job_id in ids:
        row = job(job_id)
        assert (row["state"], row["attempts"], row["errors"]) == ("succeeded", 1, [])
        assert [r["note"] for r in runs(poel_conn, job_id)] == ["start", "end"]  # once
    serve_pids = {w.pid for w in workers}
    assert not serve_pids & {r["pid"] for r in runs(poel_conn)}  # computed in children
    for worker in workers:
        logs = " ".join(str(e.get("msg")) for e in worker.logs)
        assert "lease" not in logs, logs


def test_a_job_past_its_timeout_has_its_child_killed_and_is_retried(
    serve, poel_queue, poel_conn, wait_sql, job, gone_within
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    job_id = poel_queue.enqueue("testprocs.spin_timeout", {"key": "t", "seconds": 30})
    wait_sql(  # the second attempt has started (in a new child)
        "SELECT count(*) >= 2 FROM poel_proc_runs WHERE job_id = %s AND note = 'start'",
        [job_id],
        timeout=30,
    )

    row = job(job_id)
    assert row["errors"][0]["error"] == "timed out after 1s"
    first, second = (r["pid"] for r in runs(poel_conn, job_id)[:2])
    assert first != second  # the second attempt ran in a new child
    assert gone_within(first), "the timed-out child is still running"
    worker.wait_log("worker process replaced", reason="timed out")


@pytest.mark.parametrize(
    ("how", "cause"),
    [
        ("sigkill", "worker process died: killed by SIGKILL (out of memory?)"),
        ("segfault", "worker process died: killed by SIGSEGV (segmentation fault)"),
        ("exit", "worker process died: exited with code 3"),
    ],
)
def test_a_child_that_dies_fails_only_its_attempt(
    serve, poel_queue, poel_conn, wait_sql, job, how, cause
):
    serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=2, POEL_RETRY_BACKOFF_MS=60_000)
    beside = poel_queue.enqueue("testprocs.spin", {"key": "beside", "seconds": 2})
    crashing = poel_queue.enqueue("testprocs.crash", {"key": "c", "how": how})
    wait_sql("SELECT attempts = 1 AND state = 'queued' FROM poel.jobs WHERE id = %s", [crashing])
    row = job(crashing)
    assert row["last_error"] == cause
    wait_state(wait_sql, beside, "succeeded")  # the other child's job was not touched
    assert job(beside)["attempts"] == 1
    # The pool is whole again: a new job runs in a replacement child.
    after = poel_queue.enqueue("testprocs.spin", {"key": "after", "seconds": 0})
    wait_state(wait_sql, after, "succeeded")
    crashed_pid = runs(poel_conn, crashing)[0]["pid"]
    assert runs(poel_conn, after)[0]["pid"] != crashed_pid


def test_an_exception_comes_back_with_its_traceback(serve, poel_queue, wait_sql, job):
    serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    job_id = poel_queue.enqueue("testprocs.fail", {})
    wait_state(wait_sql, job_id, "failed")
    [error] = job(job_id)["errors"]
    assert error["error"].startswith("ValueError: failing in ")
    assert "Traceback (most recent call last)" in error["traceback"]
    assert 'in fail\n    raise ValueError(f"failing in {os.getpid()}")' in error["traceback"]


def test_children_are_recycled_after_max_jobs_and_warm_state_is_built_once_each(
    serve, poel_queue, poel_conn, wait_sql
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1, POEL_PROCESS_MAX_JOBS=2)
    ids = []
    for i in range(5):  # one at a time, so that each lands on the one child there is
        ids.append(poel_queue.enqueue("testprocs.spin", {"key": str(i), "seconds": 0}))
        wait_state(wait_sql, ids[-1], "succeeded")
    pids = [runs(poel_conn, job_id)[0]["pid"] for job_id in ids]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert {r["warm"] for r in runs(poel_conn)} == {1}  # process_started once per child
    recycled = [e for e in worker.logs if e.get("msg") == "worker process recycled"]
    assert len(recycled) == 2
    assert recycled[0]["reason"] == "after 2 jobs (POEL_PROCESS_MAX_JOBS)"
    metrics = worker.http("/metrics").text
    assert "poel_processes_recycled_total 2" in metrics


def test_a_child_past_the_memory_cap_is_recycled_after_its_job(
    serve, poel_queue, poel_conn, wait_sql
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1, POEL_PROCESS_MAX_RSS_MB=150)
    ids = []
    for i in range(3):  # each keeps 60 MB more, as a leak would
        ids.append(poel_queue.enqueue("testprocs.grow", {"key": str(i), "mb": 60}))
        wait_state(wait_sql, ids[-1], "succeeded")
    notes = [(r["pid"], r["note"]) for job_id in ids for r in runs(poel_conn, job_id)]
    # The first child passed 150 MB with its second job and was replaced after it.
    assert notes[0][0] == notes[1][0] != notes[2][0]
    assert [note for _, note in notes] == ["kept 1", "kept 2", "kept 1"]
    recycled = worker.wait_log("worker process recycled")
    assert recycled["reason"].endswith("MB (POEL_PROCESS_MAX_RSS_MB)")


def test_sigterm_while_children_compute_hands_their_jobs_back(
    serve, poel_queue, poel_conn, wait_sql, job, alive
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=2, POEL_SHUTDOWN_TIMEOUT_MS=500)
    # One stops when asked (ctx.check_cancelled); the other only when killed.
    cooperative = poel_queue.enqueue("testprocs.spin", {"key": "asks", "seconds": 60})
    stubborn = poel_queue.enqueue("testprocs.grow", {"key": "warm-up", "mb": 0})
    wait_state(wait_sql, stubborn, "succeeded")
    stubborn = poel_queue.enqueue("testprocs.spin_once", {"key": "stubborn", "seconds": 60})
    wait_sql("SELECT count(*) = 2 FROM poel_proc_runs WHERE note = 'start'")
    child_pids = [r["pid"] for r in runs(poel_conn) if r["note"] == "start"]

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=15) == 0
    for job_id in (cooperative, stubborn):
        row = job(job_id)
        assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 0, None)
    for pid in child_pids:
        assert not alive(pid), f"child {pid} outlived its serve"


def test_no_child_outlives_a_killed_serve(
    serve, poel_queue, poel_conn, wait_sql, alive, gone_within
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=2)
    for key in ("a", "b"):
        poel_queue.enqueue("testprocs.spin", {"key": key, "seconds": 60})
    wait_sql("SELECT count(*) = 2 FROM poel_proc_runs WHERE note = 'start'")
    child_pids = [r["pid"] for r in runs(poel_conn)]
    assert all(alive(pid) for pid in child_pids)

    worker.kill()  # SIGKILL: no drain, no clean-up
    assert gone_within(*child_pids), [pid for pid in child_pids if alive(pid)]
    assert os.getpid() not in child_pids


def test_a_child_logs_in_the_same_stream_and_format(serve, poel_queue, wait_sql):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    job_id = poel_queue.enqueue("testprocs.print", {"key": "p"})
    wait_state(wait_sql, job_id, "succeeded")
    line = worker.wait_log("a log line from the child")
    assert (line["jobId"], line["jobType"], line["attempt"]) == (job_id, "testprocs.print", 1)
    assert line["answer"] == 42 and line["level"] == "info" and line["service"] == "poel-worker"
    assert line["child_pid"] != worker.pid  # marked as the child's
    printed = worker.wait_log("worker process output")
    assert printed["line"] == "plain text from a handler"
    library = worker.wait_log("a library's line from the child")
    assert library["level"] == "warning" and library["logger"] == "some.library"
    assert library["child_pid"] == line["child_pid"]


def test_a_childs_output_never_passes_for_serves_own_lines(serve, poel_queue, wait_sql):
    # A handler in a child process printing what looks like one of serve's log lines
    # (on stdout, or straight on its stderr) reaches the stream as the child's output,
    # inside a line of serve's, never as a line of its own.
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    job_id = poel_queue.enqueue("testprocs.print", {"key": "p"})
    wait_state(wait_sql, job_id, "succeeded")
    worker.wait_log("a log line from the child")
    forged = [e for e in worker.logs if e.get("line", "").startswith('{"level": "error"')]
    assert len(forged) == 2, forged
    assert all(e["msg"] == "worker process output" and e["level"] == "info" for e in forged)
    assert worker.find_log("forged by a handler") is None
    assert not [raw for raw in worker.lines if raw.startswith('{"level": "error", "msg": "forged')]


def test_follow_up_jobs_enqueued_in_a_child(serve, poel_queue, poel_conn, wait_sql):
    serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    job_id = poel_queue.enqueue("testprocs.fanout", {"key": "f", "children": 3})
    wait_sql("SELECT count(*) = 4 FROM poel.jobs WHERE state = 'succeeded'", timeout=20)
    children = runs(poel_conn, job_id)[0]["note"].split(",")
    assert len(children) == 3


def short_jobs_then_a_long_one(poel_queue, wait_sql, seconds: float) -> tuple[int, list[int]]:
    """Enough no-op jobs for the pool to see its jobs are short (and claim ahead), then a
    long job holding the only child, then no-op jobs claimed ahead behind it."""
    warm = [poel_queue.enqueue("testprocs.noop", {}) for _ in range(30)]
    wait_sql("SELECT bool_and(state = 'succeeded') FROM poel.jobs WHERE id = ANY(%s)", [warm])
    long = poel_queue.enqueue("testprocs.spin", {"key": "long", "seconds": seconds})
    wait_sql("SELECT count(*) = 1 FROM poel_proc_runs WHERE note = 'start'")
    behind = [poel_queue.enqueue("testprocs.noop", {}) for _ in range(5)]
    return long, behind


def test_short_jobs_claimed_ahead_of_a_long_one_go_back_to_the_queue(
    serve, poel_queue, poel_conn, wait_sql, job
):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1)
    long, behind = short_jobs_then_a_long_one(poel_queue, wait_sql, seconds=3)

    handed = worker.wait_log("job handed back: no worker process free", timeout=10)
    assert handed["jobId"] in behind
    wait_sql("SELECT bool_and(state = 'succeeded') FROM poel.jobs WHERE id = ANY(%s)", [behind])
    for job_id in [long, *behind]:
        row = job(job_id)
        assert (row["state"], row["attempts"]) == ("succeeded", 1), row  # not counted
    assert [r["note"] for r in runs(poel_conn, long)] == ["start", "end"]
    metrics = worker.http("/metrics").text
    handed_back = [
        line for line in metrics.splitlines() if line.startswith("poel_processes_handed")
    ]
    assert handed_back and float(handed_back[0].split()[-1]) >= 1, metrics


def test_sigterm_hands_back_jobs_waiting_for_a_busy_child(serve, poel_queue, wait_sql, job):
    worker = serve(POEL_LOAD_PLUGINS=PROCS, POEL_PROCESSES=1, POEL_SHUTDOWN_TIMEOUT_MS=200)
    long, behind = short_jobs_then_a_long_one(poel_queue, wait_sql, seconds=60)
    wait_sql(
        "SELECT count(*) > 0 FROM poel.jobs WHERE id = ANY(%s) AND state = 'running'", [behind]
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=15) == 0
    for job_id in [long, *behind]:
        row = job(job_id)
        assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 0, None), row
