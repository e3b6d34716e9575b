"""The executors through the test kit and an in-process worker: ``run_job`` runs a process
job in a real child (what cannot cross the process boundary fails in a plugin's own
tests), and a thread job on a real OS thread."""

from __future__ import annotations

import os
import threading
from typing import Any


def test_run_job_runs_a_process_job_in_a_child_process(run_job: Any, poel_conn: Any) -> None:
    first = run_job("testprocs.spin", {"key": "a", "seconds": 0})
    second = run_job("testprocs.spin", {"key": "b", "seconds": 0})
    assert (first.state, second.state) == ("succeeded", "succeeded")
    rows = poel_conn.execute("SELECT key, pid, warm FROM poel_proc_runs ORDER BY id").fetchall()
    assert {r["pid"] for r in rows}.isdisjoint({os.getpid()})
    assert {r["warm"] for r in rows} == {1}  # process_started ran once in each child


def test_run_job_reports_a_process_jobs_failure_with_its_traceback(run_job: Any) -> None:
    result = run_job("testprocs.fail", {})
    assert result.state == "failed"
    assert result.error.startswith("ValueError: failing in ")
    assert str(os.getpid()) not in result.error
    assert "Traceback" in result.row["errors"][0]["traceback"]


def test_an_invalid_stored_payload_fails_before_a_child_sees_it(
    run_job: Any, poel_conn: Any
) -> None:
    job_id = poel_conn.execute(  # stored unvalidated, as from SQL
        "SELECT poel.enqueue('testprocs.crash', '{\"how\": \"politely\"}') AS id"
    ).fetchone()["id"]
    assert run_job.worker.run_once() == [job_id]
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "how: Input should be 'sigkill', 'segfault' or 'exit'" in row["last_error"]
    assert poel_conn.execute("SELECT count(*) AS n FROM poel_proc_runs").fetchone()["n"] == 0


def test_a_thread_job_runs_on_a_real_thread_with_its_own_connection(
    run_job: Any, poel_conn: Any
) -> None:
    result = run_job("testprocs.thread", {"key": "t", "seconds": 0.05})
    assert result.state == "succeeded"
    notes = [r["note"] for r in poel_conn.execute("SELECT note FROM poel_proc_runs ORDER BY id")]
    assert notes[0] == f"thread {notes[0].split()[1]}" and notes[1] == "end"
    assert int(notes[0].split()[1]) != threading.get_native_id()  # not the event loop's
    rows = poel_conn.execute("SELECT DISTINCT pid FROM poel_proc_runs").fetchall()
    assert [r["pid"] for r in rows] == [os.getpid()]  # a thread of this process


def test_a_process_jobs_context_matches_a_greenlet_jobs(run_job: Any, poel_conn: Any) -> None:
    result = run_job("testprocs.probe", {"key": "p"}, max_attempts=4)
    assert result.state == "succeeded", result.error
    [row] = poel_conn.execute("SELECT note FROM poel_proc_runs").fetchall()
    timeout, queue, attempts, enqueued_at, has_settings, cancelled = row["note"].split()
    assert timeout.endswith("ms") and 110_000 < int(timeout[:-2]) <= 120_000  # time left
    assert (queue, attempts, has_settings, cancelled) == ("cpu", "4", "True", "False")
    assert enqueued_at == result.row["created_at"].isoformat()
