"""Cancelling a workflow whole (issue 20, migration 0025): its waiting and queued steps are
cancelled at once, its running steps asked to stop as a running job is (the flag and a
NOTIFY poel_cancel), and the workflow ends cancelled once the last of them ended, whatever
their outcome; a second cancel, or a cancel of a workflow that ended, changes nothing; a
cancel racing the outcomes of its steps (which hold their rows while they wait for the
workflow's) ends one way, without a deadlock. Steps are claimed and finished through the
store, as a worker does, so that each test chooses who goes first."""

from __future__ import annotations

import random

import gevent
import psycopg
import pytest
import workflow_kit
from workflow_kit import T, claim, end, enqueue_chain, outcome, workflow_row

from poel_host import Workflow, WorkflowNotFound

queue, new_store, store = workflow_kit.queue, workflow_kit.new_store, workflow_kit.store


def test_waiting_and_queued_steps_are_cancelled_at_once_and_twice_changes_nothing(queue, poel_conn):
    flow = Workflow("ingest")
    a = flow.step("a", T)
    b = flow.step("b", T, after=a)
    flow.step("c", T, after=b)
    flow.step("later", T, delay=3600)
    workflow_id = queue.enqueue_workflow(flow)

    done = queue.cancel_workflow(workflow_id)
    assert (done.state, done.cancelled, done.stopping, done.finished, done.changed) == (
        "cancelled",
        4,
        0,
        True,
        True,
    )
    assert done.message == f"workflow {workflow_id} 'ingest' cancelled: 4 steps cancelled"
    state = queue.workflow(workflow_id)
    assert state is not None
    assert state.state == "cancelled" and state.failed_step is None
    assert state.finished_at is not None and state.cancelled_at is not None
    assert [s.state for s in state.steps] == ["cancelled"] * 4
    assert {s.error for s in state.steps} == {f"cancelled: workflow {workflow_id} was cancelled"}
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0

    again = queue.cancel_workflow(workflow_id)
    assert (again.state, again.cancelled, again.changed) == ("cancelled", 0, False)
    assert again.message == (
        f"workflow {workflow_id} 'ingest' was cancelled already: nothing changed"
    )
    assert queue.workflow(workflow_id) == state


def test_an_unknown_workflow_is_an_error_and_an_ended_one_is_left_as_it_is(queue, store):
    with pytest.raises(WorkflowNotFound, match="workflow 424242 does not exist"):
        queue.cancel_workflow(424242)
    workflow_id = enqueue_chain(queue, "done", "only")
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "succeeded")

    done = queue.cancel_workflow(workflow_id)
    assert (done.state, done.changed, done.finished) == ("succeeded", False, True)
    assert done.message == (
        f"workflow {workflow_id} 'done' had ended already (succeeded): nothing to cancel"
    )
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.cancelled_at, state.steps[0].state) == (
        "succeeded",
        None,
        "succeeded",
    )


@pytest.mark.parametrize("ends", ["cancelled", "succeeded", "queued"])
def test_a_running_step_is_asked_to_stop_and_the_workflow_ends_with_it(
    queue, store, poel_conn, poel_dsn, ends
):
    """The worker holding the step records its end: cancelled (it was stopped), succeeded
    (it returned first) or queued again for a retry, which the trigger makes cancelled."""
    workflow_id = enqueue_chain(queue, "running", "a", "b")
    token, rows = claim(store)
    a_id = rows[0]["id"]
    with psycopg.connect(poel_dsn, autocommit=True) as listener:
        listener.execute("LISTEN poel_cancel")
        done = queue.cancel_workflow(workflow_id)
        told = [n.payload for n in listener.notifies(timeout=2.0, stop_after=1)]
    assert told == [f"poel {a_id}"]
    assert (done.cancelled, done.stopping, done.finished, done.changed) == (1, 1, False, True)
    assert done.message == (
        f"workflow {workflow_id} 'running' cancelled: 1 step cancelled; 1 running step asked "
        f"to stop (each ends cancelled within about a second; see poel-host workflows show "
        f"{workflow_id})"
    )
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.finished_at) == ("cancelled", None)
    assert [s.state for s in state.steps] == ["running", "cancelled"]
    assert poel_conn.execute(
        "SELECT cancel_requested FROM poel.jobs WHERE id = %s", [a_id]
    ).fetchone()["cancel_requested"]
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 1

    again = queue.cancel_workflow(workflow_id)  # still stopping: nothing more to do
    assert (again.cancelled, again.stopping, again.changed) == (0, 1, False)
    assert again.message.startswith(
        f"workflow {workflow_id} 'running' was cancelled already: nothing changed; 1 running"
    )

    assert store.finish([outcome(a_id, token, ends, delay_ms=60_000)]) == {a_id}
    state = queue.workflow(workflow_id)
    assert state is not None
    assert state.state == "cancelled" and state.finished_at is not None
    assert state.step("a").state == ("succeeded" if ends == "succeeded" else "cancelled")
    assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0


def test_a_failure_before_the_cancel_is_kept_and_run_anyway_steps_are_cancelled_too(queue, store):
    flow = Workflow("failing")
    a = flow.step("a", T, max_attempts=1)
    flow.step("after_a", T, after=a)
    flow.step("report", T, after=a, run_anyway=True)
    workflow_id = queue.enqueue_workflow(flow)
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "failed")  # report is now due
    state = queue.workflow(workflow_id)
    assert state is not None and (state.state, state.finished_at) == ("failed", None)

    done = queue.cancel_workflow(workflow_id)
    assert (done.cancelled, done.finished) == (1, True)
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.failed_step) == ("cancelled", "a")
    assert [s.state for s in state.steps] == ["failed", "cancelled", "cancelled"]


def test_the_sql_function_says_what_it_did(queue, poel_conn):
    workflow_id = enqueue_chain(queue, "from sql", "a")
    said = poel_conn.execute("SELECT poel.cancel_workflow(%s) AS o", [workflow_id]).fetchone()
    assert said["o"] == {
        "workflow_id": workflow_id,
        "name": "from sql",
        "state": "cancelled",
        "cancelled": 1,
        "stopping": 0,
        "finished": True,
        "changed": True,
    }
    with pytest.raises(psycopg.errors.NoDataFound, match="workflow 99999 does not exist"):
        poel_conn.execute("SELECT poel.cancel_workflow(99999)")


@pytest.mark.parametrize("outcomes", ["succeeded", "mixed"])
def test_a_cancel_racing_the_outcomes_of_its_steps_ends_one_way(
    queue, new_store, poel_conn, outcomes
):
    """The running steps' outcomes (two batches, each in shuffled order, each holding its
    rows while it waits for the workflow's) and a cancel, 20 times: whichever goes first,
    no deadlock; every step ends, the workflow ends cancelled with no step left, and the
    waiting step never ran. With "mixed" outcomes a step failed (or was queued again for
    a retry) first may leave the workflow failed before the cancel reaches it."""
    finishers = [new_store(), new_store()]
    canceller = new_store()
    shuffle = random.Random(20)
    for n in range(20):
        flow = Workflow(f"race {n}")
        parents = flow.fan_out("p", f"wf.race{n}", [{}] * 6)
        flow.step("d", "wf.never", after=parents)
        workflow_id = queue.enqueue_workflow(flow)
        token, rows = claim(finishers[0], f"wf.race{n}")
        assert len(rows) == 6
        states = ["succeeded"] * 6
        if outcomes == "mixed":
            states = [shuffle.choice(["succeeded", "failed", "queued"]) for _ in rows]
        ended = [outcome(r["id"], token, s) for r, s in zip(rows, states, strict=True)]
        shuffle.shuffle(ended)
        racing = [
            gevent.spawn(finishers[0].finish, ended[:3]),
            gevent.spawn(canceller.cancel_workflow, workflow_id),
            gevent.spawn(finishers[1].finish, ended[3:]),
        ]
        gevent.joinall(racing, raise_error=True)
        state = queue.workflow(workflow_id)
        assert state is not None
        assert state.finished_at is not None, state
        assert state.step("d").state == "cancelled"
        assert all(s.state in ("succeeded", "failed", "cancelled") for s in state.steps)
        if outcomes == "succeeded":
            assert state.state == "cancelled"
            assert all(s.state == "succeeded" for s in state.steps[:6])
        else:
            assert state.state in ("cancelled", "failed")
            if state.state == "failed":
                assert racing[1].value["state"] == "failed"  # it had ended before the cancel
        assert workflow_row(poel_conn, workflow_id)["steps_left"] == 0
    left = poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE state IN ('queued', 'running')"
    ).fetchone()["n"]
    assert left == 0


def test_a_cancel_gives_way_to_an_outcome_holding_its_step_and_waiting_for_the_workflow(
    queue, store, poel_dsn
):
    """The order an outcome takes its locks in (the step's row, then its workflow's, in
    steps_ended), played by hand: the cancel, holding the workflow's row, finds the step's
    row held and gives the workflow's back instead of waiting; the outcome gets it, ends,
    and the cancel then asks the step to stop. Waiting would have been a deadlock."""
    workflow_id = enqueue_chain(queue, "held", "a", "b")
    _, rows = claim(store)
    a_id = rows[0]["id"]
    with psycopg.connect(poel_dsn) as outcome:
        outcome.execute("UPDATE poel.jobs SET progress = 0.5 WHERE id = %s", [a_id])
        cancelling = gevent.spawn(queue.cancel_workflow, workflow_id)
        gevent.sleep(0.3)
        assert not cancelling.ready()  # a's row is held: a cannot be asked to stop yet
        outcome.execute("SELECT FROM poel.workflows WHERE id = %s FOR UPDATE", [workflow_id])
        outcome.commit()
    done = cancelling.get(timeout=10)
    assert (done.cancelled, done.stopping, done.finished) == (1, 1, False)
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.step("a").state, state.step("b").state) == (
        "cancelled",
        "running",
        "cancelled",
    )
