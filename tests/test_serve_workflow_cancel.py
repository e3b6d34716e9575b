"""Cancelling a running workflow under a real ``poel-host serve`` (issue 20): its three
steps running side by side, one on each executor (a greenlet in a query, a thread waiting
on its ctx, a process computing with a helper program in its group), each stop within a
second of ``Queue.cancel_workflow`` and end cancelled with their one attempt; the step
waiting on them is cancelled at once and never runs; the workflow ends cancelled once
the last of them ended. Then its retry runs them all again."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from poel_host import Queue, Workflow
from tests.conftest import process_alive, wait_until

pytestmark = pytest.mark.process

PLUGINS = "poel-testprocs,poel-teststeer,poel-testworkflows"
EXECUTORS = ("greenlet", "thread", "process")


def notes(conn: Any, job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT note FROM poel_proc_runs WHERE job_id = %s AND key <> 'hook' ORDER BY id",
        [job_id],
    ).fetchall()
    return [str(r["note"]) for r in rows]


def test_cancelling_a_running_workflow_stops_its_steps_on_every_executor(
    serve: Any, poel_dsn: str, poel_conn: Any
) -> None:
    serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=1)
    flow = Workflow("long")
    waits = [flow.step(e, f"steer.wait.{e}", {"key": f"wf-{e}", "seconds": 60}) for e in EXECUTORS]
    flow.step("merge", "flows.greenlet", {"value": "never"}, after=waits)
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        workflow_id = queue.enqueue_workflow(flow)
        enqueued = queue.workflow(workflow_id)
        assert enqueued is not None
        ids = {e: enqueued.step(e).job_id for e in EXECUTORS}
        started = {
            e: wait_until(lambda e=e: notes(poel_conn, ids[e]), timeout=30, what=f"{e} started")
            for e in EXECUTORS
        }

        asked = time.monotonic()
        done = queue.cancel_workflow(workflow_id)
        assert (done.cancelled, done.stopping, done.finished) == (1, 3, False)
        wait_until(
            lambda: queue.workflow(workflow_id).finished_at is not None,  # type: ignore[union-attr]
            timeout=3.0,
            interval=0.01,
            what="the workflow finished",
        )
        took = time.monotonic() - asked
        state = queue.workflow(workflow_id)
        assert state is not None
        assert took < 1.5, took
        assert state.state == "cancelled" and state.cancelled_at is not None
        assert {s.name: s.state for s in state.steps} == dict.fromkeys(
            (*EXECUTORS, "merge"), "cancelled"
        )
        for executor in EXECUTORS:
            step = state.step(executor)
            assert step.finished_at is not None
            stopped_in = (step.finished_at - state.cancelled_at).total_seconds()
            assert stopped_in < 1.0, (executor, stopped_in)
            assert step.attempts == 1
            assert notes(poel_conn, step.job_id) == started[executor]  # no "end": stopped
        assert state.step("merge").attempts == 0

        # The process step's child and its helper program are gone.
        match = re.search(r"helper=(\d+)", started["process"][0])
        assert match is not None
        wait_until(lambda: not process_alive(int(match[1])), timeout=10, what="helper gone")

        # A retry runs the three again (and would run the merge after them).
        retried = queue.retry_workflow(workflow_id)
        assert (retried.retried, retried.due) == ((*EXECUTORS, "merge"), 3)
        for executor in EXECUTORS:
            wait_until(
                lambda e=executor: len(notes(poel_conn, ids[e])) == 2,
                timeout=30,
                what=f"{executor} started again",
            )
        assert queue.cancel_workflow(workflow_id).stopping == 3
        wait_until(
            lambda: queue.workflow(workflow_id).finished_at is not None,  # type: ignore[union-attr]
            timeout=3.0,
            what="the workflow finished again",
        )
