"""Workflow steps run by a worker (issue 20): each executor's handler reads the results of
the steps it waits for (also once they were archived), and a fan-in's dependencies ended
by many concurrent outcome batches, from as many connections, release the waiting step
exactly once, without a deadlock; the other paths that end a step (the rescuer's
failure, an operator's cancel) cascade as an outcome does."""

from __future__ import annotations

import random

import gevent
import pytest
import workflow_kit
from workflow_kit import claim, outcome, run_until_done, workflow_row

from poel_host import Workflow

worker, queue, new_store = workflow_kit.worker, workflow_kit.queue, workflow_kit.new_store


@pytest.mark.parametrize("executor", ["greenlet", "thread", "process"])
def test_a_step_reads_its_dependencies_results_on_each_executor(worker, queue, executor):
    flow = Workflow("diamond")
    a = flow.step("a", "flows.greenlet", {"value": 1})
    b = flow.step("b", "flows.thread", {"value": "bee"}, after=a)
    c = flow.step("c", "flows.greenlet", {"value": [3]}, after=a)
    d = flow.step("d", f"flows.{executor}", {"value": "dee"}, after=[b, c])
    workflow_id = queue.enqueue_workflow(flow)
    state = run_until_done(worker, queue, workflow_id)
    assert state.state == "succeeded"
    result = queue.get(state.step(d.name).job_id)["result"]
    assert result["value"] == "dee"
    assert {k: v["value"] for k, v in result["seen"].items()} == {"b": "bee", "c": [3]}
    assert result["seen"]["b"]["seen"] == {"a": queue.get(state.step("a").job_id)["result"]}


def test_results_are_read_from_the_history_once_archived(worker, queue, new_store):
    flow = Workflow("archived")
    a = flow.step("a", "flows.greenlet", {"value": "kept"})
    flow.step("b", "flows.process", {"value": "reader"}, after=a)
    workflow_id = queue.enqueue_workflow(flow)
    worker.run_once()  # a only: b is released by a's outcome, after the claim
    store = new_store()
    store.make_done_partitions(back_s=3600, width_s=3600, ahead=2)
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=100) == 1
    state = run_until_done(worker, queue, workflow_id)
    assert state.state == "succeeded"
    assert queue.get(state.step("b").job_id)["result"]["seen"]["a"]["value"] == "kept"
    store.archive_finished(after_s=0, succeeded_hours=24, batch=100)
    shown = queue.workflow(workflow_id)
    assert shown is not None and [s.state for s in shown.steps] == ["succeeded", "succeeded"]


def test_a_failed_step_fails_the_workflow_and_its_run_anyway_step_runs(worker, queue):
    flow = Workflow("failing")
    a = flow.step("a", "flows.greenlet", {"value": 1})
    bad = flow.step("bad", "flows.thread", {"fail": True}, after=a)
    after_bad = flow.step("after_bad", "flows.greenlet", {}, after=bad)
    flow.step("report", "flows.process", {"value": "r"}, after=[a, bad, after_bad], run_anyway=True)
    workflow_id = queue.enqueue_workflow(flow)
    state = run_until_done(worker, queue, workflow_id)
    assert (state.state, state.failed_step) == ("failed", "bad")
    assert "failed on purpose" in (state.failed_error or "")
    assert [s.state for s in state.steps] == ["succeeded", "failed", "cancelled", "succeeded"]
    seen = queue.get(state.step("report").job_id)["result"]["seen"]
    assert list(seen) == ["a"]  # what failed or was cancelled has no result to read


def test_a_fan_in_ended_by_concurrent_batches_releases_its_step_once(queue, poel_conn, new_store):
    """Two workflows of 500 parents each: their parents finished in 8 concurrent batches
    (each mixing both workflows, in shuffled order, on a connection of its own). Each
    batch locks both workflows; taken in id order, no two wait on each other in a cycle."""
    children = []
    for n in range(2):
        flow = Workflow(f"fan-in {n}")
        parts = flow.fan_out("part", "wf.fan", [{"i": i} for i in range(500)])
        flow.step("merge", "wf.merge", after=parts)
        children.append(queue.enqueue_workflow(flow))
    stores = [new_store() for _ in range(8)]
    token, rows = claim(stores[0], "wf.fan", limit=2000)
    assert len(rows) == 1000
    outcomes = [outcome(r["id"], token, "succeeded") for r in rows]
    random.Random(7).shuffle(outcomes)
    batches = [outcomes[i::8] for i in range(8)]
    done = [gevent.spawn(store.finish, batch) for store, batch in zip(stores, batches, strict=True)]
    gevent.joinall(done, raise_error=True)
    assert sum(len(g.value) for g in done) == 1000
    merged = poel_conn.execute(
        "SELECT workflow_id, state::text AS state, ready, waiting_on, run_at <= now() AS due"
        " FROM poel.jobs WHERE step = 'merge' ORDER BY workflow_id"
    ).fetchall()
    assert [(m["state"], m["ready"], m["waiting_on"], m["due"]) for m in merged] == [
        ("queued", True, 0, True)
    ] * 2
    _, claimed = claim(stores[0], "wf.merge")
    assert len(claimed) == 2
    for workflow_id in children:
        state = queue.workflow(workflow_id)
        assert state is not None and state.state == "running"
        assert workflow_row(poel_conn, workflow_id)["steps_left"] == 1


def test_a_step_failed_by_the_rescuer_cancels_its_dependents(queue, new_store):
    flow = Workflow("rescued")
    a = flow.step("a", "wf.lost", max_attempts=1)
    flow.step("b", "wf.lost", after=a)
    workflow_id = queue.enqueue_workflow(flow)
    store = new_store()
    claim(store, "wf.lost", owner="gone", lease_ms=1)
    gevent.sleep(0.05)
    assert [r["state"] for r in store.recover_expired(base_ms=10, max_ms=10)] == ["failed"]
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.failed_step) == ("failed", "a")
    assert "worker lost" in (state.failed_error or "")
    assert state.step("b").state == "cancelled"


def test_the_kit_context_gives_a_step_the_results_a_test_sets(poel_context):
    from poel_testjobs.workflows import StepPayload, run_step

    assert poel_context.dependency_results() == {}  # not a step: nothing read
    ctx = poel_context.replace(dependencies={"b": {"value": 2}})
    assert run_step(StepPayload(value=1), ctx)["seen"] == {"b": {"value": 2}}


def test_a_cancel_racing_the_outcome_that_releases_the_step_ends_one_way(queue, new_store):
    """An operator cancels a waiting step while the outcome of its dependency is written,
    30 times: whichever goes first, no deadlock, and the step ends cancelled once, failing
    its workflow, with every step counted off."""
    finisher, canceller = new_store(), new_store()
    for n in range(30):
        flow = Workflow(f"race {n}")
        parents = flow.fan_out("p", f"wf.race{n}", [{}, {}, {}])
        flow.step("d", "wf.never", after=parents)
        workflow_id = queue.enqueue_workflow(flow)
        token, rows = claim(finisher, f"wf.race{n}", limit=3)
        state = queue.workflow(workflow_id)
        assert state is not None
        d = state.step("d").job_id
        outcomes = [outcome(r["id"], token, "succeeded") for r in rows]
        racing = [gevent.spawn(finisher.finish, outcomes), gevent.spawn(canceller.cancel_job, d)]
        gevent.joinall(racing, raise_error=True)
        state = queue.workflow(workflow_id)
        assert state is not None
        assert [s.state for s in state.steps] == ["succeeded"] * 3 + ["cancelled"]
        assert (state.state, state.failed_step, state.finished_at is not None) == (
            "failed",
            "d",
            True,
        )
