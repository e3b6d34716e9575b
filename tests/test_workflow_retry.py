"""Retrying a workflow whole (issue 20, migration 0025): only its failed and cancelled steps
run again, each waiting again for those it depends on, and the step merging them reads the
results the succeeded steps kept; a running workflow (or one whose steps still run) is
refused; an operator's retry of one step counts its end off once (its workflow's steps
left used to go below zero); steps archived in the history come back, with run_anyway."""

from __future__ import annotations

import psycopg
import pytest
import workflow_kit
from workflow_kit import T, claim, end, enqueue_chain, run_until_done, workflow_row

from poel_host import Workflow, WorkflowNotFound, WorkflowRefused

worker, queue, store = workflow_kit.worker, workflow_kit.queue, workflow_kit.store


def test_a_retry_runs_only_the_failed_and_cancelled_steps_and_the_merge_reads_all_results(
    worker, queue, poel_conn, tmp_path
):
    fixed = tmp_path / "fixed"
    flow = Workflow("ingest")
    a = flow.step("a", "flows.greenlet", {"value": "a"})
    b = flow.step("b", "flows.thread", {"value": "b", "fail_unless": str(fixed)}, after=a)
    c = flow.step("c", "flows.process", {"value": "c"}, after=a)
    flow.step("merge", "flows.greenlet", {"value": "m"}, after=[b, c])
    workflow_id = queue.enqueue_workflow(flow)
    failed = run_until_done(worker, queue, workflow_id)
    assert (failed.state, failed.failed_step) == ("failed", "b")
    assert [s.state for s in failed.steps] == ["succeeded", "failed", "succeeded", "cancelled"]
    kept = {name: queue.get(failed.step(name).job_id) for name in ("a", "c")}

    fixed.touch()
    retried = queue.retry_workflow(workflow_id)
    assert (retried.state, retried.retried, retried.due, retried.changed) == (
        "running",
        ("b", "merge"),
        1,
        True,
    )
    assert retried.message == (
        f"workflow {workflow_id} 'ingest' running again: 2 steps queued again (b, merge); "
        "1 due now, 1 waiting for the steps they depend on"
    )
    again = queue.workflow(workflow_id)
    assert again is not None
    assert (again.state, again.failed_step, again.failed_error, again.finished_at) == (
        "running",
        None,
        None,
        None,
    )
    assert [s.state for s in again.steps] == ["succeeded", "queued", "succeeded", "waiting"]
    assert again.step("b").attempts == 0
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 2

    done = run_until_done(worker, queue, workflow_id)
    assert done.state == "succeeded" and done.failed_step is None
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0
    for name, before in kept.items():  # not run again
        now = queue.get(done.step(name).job_id)
        assert (now["started_at"], now["finished_at"], now["attempts"], now["result"]) == (
            before["started_at"],
            before["finished_at"],
            before["attempts"],
            before["result"],
        )
    b_row = queue.get(done.step("b").job_id)
    assert [e["attempt"] for e in b_row["errors"]] == [1]  # the first run's error, kept
    seen = queue.get(done.step("merge").job_id)["result"]["seen"]
    assert {k: v["value"] for k, v in seen.items()} == {"b": "b", "c": "c"}
    assert seen["c"] == kept["c"]["result"]


def test_a_running_workflow_is_not_retried_nor_one_whose_steps_still_run(queue, store, poel_conn):
    flow = Workflow("busy")
    a = flow.step("a", T, max_attempts=1)
    flow.step("report", T, after=a, run_anyway=True)
    workflow_id = queue.enqueue_workflow(flow)
    with pytest.raises(WorkflowRefused, match=f"workflow {workflow_id} is running"):
        queue.retry_workflow(workflow_id)
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "failed")  # report is due: the workflow failed
    token, rows = claim(store)  # report runs
    with pytest.raises(WorkflowRefused, match="1 of its steps have not ended yet"):
        queue.retry_workflow(workflow_id)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        poel_conn.execute("SELECT poel.retry_workflow(%s)", [workflow_id])
    end(store, rows[0]["id"], token, "succeeded")
    retried = queue.retry_workflow(workflow_id)
    assert retried.retried == ("a",)  # report succeeded: it is not run again
    with pytest.raises(WorkflowNotFound):
        queue.retry_workflow(123456)


def test_a_succeeded_workflow_has_nothing_to_retry(queue, store):
    workflow_id = enqueue_chain(queue, "fine", "a")
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "succeeded")
    retried = queue.retry_workflow(workflow_id)
    assert (retried.changed, retried.retried, retried.state) == (False, (), "succeeded")
    assert retried.message == f"workflow {workflow_id} 'fine' succeeded: nothing to retry"


def test_a_cancelled_workflow_runs_again_from_its_cancelled_steps(queue, store):
    workflow_id = enqueue_chain(queue, "cancelled", "a", "b")
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "succeeded")
    queue.cancel_workflow(workflow_id)
    retried = queue.retry_workflow(workflow_id)
    assert (retried.retried, retried.due) == (("b",), 1)
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.cancelled_at, state.step("b").state) == ("running", None, "queued")


def test_an_operator_retry_of_one_step_counts_it_off_once(queue, store, poel_conn):
    """A step retried by hand (Queue.retry, jobs retry) runs now; its workflow is not
    finished until it ended, then finished again with no step left (it was -1)."""
    flow = Workflow("by hand")
    a = flow.step("a", T, max_attempts=1)
    flow.step("b", T, after=a)
    workflow_id = queue.enqueue_workflow(flow)
    token, rows = claim(store)
    a_id = rows[0]["id"]
    end(store, a_id, token, "failed")
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0
    assert queue.retry(a_id) is True
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.finished_at, state.step("a").state) == ("failed", None, "queued")
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 1
    token, rows = claim(store)
    end(store, a_id, token, "succeeded")
    state = queue.workflow(workflow_id)
    assert state is not None
    assert state.finished_at is not None and state.state == "failed"
    assert state.step("b").state == "cancelled"  # its failure's cancels stand
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0


def test_archived_steps_come_back_waiting_again_and_keep_run_anyway(queue, store, poel_conn):
    flow = Workflow("archived")
    a = flow.step("a", T, max_attempts=1)
    b = flow.step("b", T, after=a)
    flow.step("report", T, {"r": 1}, after=[a, b], run_anyway=True, max_attempts=1)
    workflow_id = queue.enqueue_workflow(flow)
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "failed")  # b cancelled, report due
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "failed")  # report failed too
    store.make_done_partitions(back_s=3600, width_s=3600, ahead=2)
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=100) == 3
    assert (
        poel_conn.execute(
            "SELECT count(*) AS n FROM poel.jobs WHERE workflow_id = %s", [workflow_id]
        ).fetchone()["n"]
        == 0
    )

    retried = queue.retry_workflow(workflow_id)
    assert (retried.retried, retried.due) == (("a", "b", "report"), 1)
    live = poel_conn.execute(
        "SELECT step, state::text AS state, ready, waiting_on, run_anyway, run_at > now() AS later"
        " FROM poel.jobs WHERE workflow_id = %s ORDER BY id",
        [workflow_id],
    ).fetchall()
    assert [tuple(r.values()) for r in live] == [
        ("a", "queued", True, 0, False, False),
        ("b", "queued", False, 1, False, True),
        ("report", "queued", False, 2, True, True),
    ]
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 3
    token, rows = claim(store)
    assert [r["id"] for r in rows] == [queue.workflow(workflow_id).step("a").job_id]
    end(store, rows[0]["id"], token, "succeeded")  # b released
    assert queue.workflow(workflow_id).step("b").state == "queued"


def test_the_dashboards_retry_of_a_type_reopens_the_steps_in_their_workflows(
    queue, store, poel_conn
):
    ids = []
    for n in range(2):
        flow = Workflow(f"bulk {n}")
        bad = flow.step("bad", "wfr.bad", max_attempts=1)
        flow.step("after", T, after=bad)
        ids.append(queue.enqueue_workflow(flow))
    token, rows = claim(store, "wfr.bad")
    for row in rows:
        end(store, row["id"], token, "failed")
    assert [workflow_row(poel_conn, i)["steps_left"] for i in ids] == [0, 0]
    assert sorted(store.retry_failed_of_type("wfr.bad")) == sorted(r["id"] for r in rows)
    for workflow_id in ids:
        state = queue.workflow(workflow_id)
        assert state is not None
        assert (state.finished_at, state.step("bad").state) == (None, "queued")
        assert workflow_row(poel_conn, workflow_id)["steps_left"] == 1


def test_a_retry_whose_step_key_is_held_by_a_live_job_is_refused_whole(queue, store, poel_conn):
    flow = Workflow("keyed")
    flow.step("a", T, unique_key="k", max_attempts=1)
    flow.step("b", T)
    workflow_id = queue.enqueue_workflow(flow)
    token, rows = claim(store)
    for row in rows:
        end(store, row["id"], token, "failed")
    queue.enqueue(T, {}, unique_key="k")
    with pytest.raises(WorkflowRefused, match="unique_key"):
        queue.retry_workflow(workflow_id)
    state = queue.workflow(workflow_id)
    assert state is not None
    assert state.state == "failed" and [s.state for s in state.steps] == ["failed", "failed"]
