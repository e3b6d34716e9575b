"""Retention of workflows (issue 20, migration 0027): a finished workflow is deleted with its
dependencies once past the retention its steps had (succeeded, or as the dead letter when
it has a failure), a batch of steps' worth at a time; a workflow without a finish time is
never deleted, however old its steps; a deleted workflow reads as not found everywhere.
Every dependency carries its workflow's id, however it was enqueued, and the upgrade gives
it to those enqueued before."""

from __future__ import annotations

from typing import Any

import pytest
import workflow_kit
from workflow_kit import T, claim, end, enqueue_chain, outcome

from poel_host import Workflow, WorkflowNotFound, migrations
from poel_host.worker.pruner import Pruner

queue, store = workflow_kit.queue, workflow_kit.store


class Log:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _keep(self, msg: str, **fields: Any) -> None:
        self.lines.append((msg, fields))

    debug = info = warning = error = _keep


def age(conn: Any, workflow_id: int, hours: float) -> None:
    """Make the workflow and its steps (live or archived) as if they ended ``hours`` ago;
    a workflow without a finish time keeps none."""
    conn.execute(
        "UPDATE poel.workflows SET created_at = created_at - %(h)s * interval '1 hour',"
        " finished_at = finished_at - %(h)s * interval '1 hour' WHERE id = %(id)s",
        {"h": hours, "id": workflow_id},
    )
    conn.execute(
        "UPDATE poel.jobs SET created_at = created_at - %(h)s * interval '1 hour',"
        " finished_at = finished_at - %(h)s * interval '1 hour' WHERE workflow_id = %(id)s",
        {"h": hours, "id": workflow_id},
    )


def dependencies(conn: Any, workflow_id: int) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM poel.job_dependencies WHERE workflow_id = %s", [workflow_id]
    ).fetchone()["n"]


def finished(queue, store, name: str, *states: str) -> int:
    """A chain of steps ended one by one with ``states`` (those after a failure are
    cancelled by it); the workflow's id."""
    workflow_id = enqueue_chain(queue, name, *(f"s{i}" for i in range(len(states))))
    for state in states:
        token, rows = claim(store)
        if not rows:
            break
        end(store, rows[0]["id"], token, state)
    return workflow_id


def prune_all(store, *, succeeded_hours: float = 24, failed_hours: float | None = None) -> int:
    """Prune until nothing is left to prune; how many workflows."""
    pruned = 0
    while True:
        count, _ = store.prune_workflows(
            succeeded_hours=succeeded_hours, failed_hours=failed_hours, batch=1000
        )
        if not count:
            return pruned
        pruned += count


def test_every_dependency_carries_its_workflow_however_it_was_enqueued(queue, poel_conn):
    from_python = enqueue_chain(queue, "python", "a", "b", "c")
    from_sql = poel_conn.execute(
        "SELECT poel.enqueue_workflow('sql', %s::jsonb) AS id",
        ['[{"step": "a", "job_type": "t"}, {"step": "b", "job_type": "t", "after": ["a"]}]'],
    ).fetchone()["id"]
    rows = poel_conn.execute(
        "SELECT d.workflow_id, j.workflow_id AS step_workflow FROM poel.job_dependencies AS d"
        " JOIN poel.jobs AS j ON j.id = d.job_id ORDER BY d.job_id"
    ).fetchall()
    assert [(r["workflow_id"], r["step_workflow"]) for r in rows] == [
        (from_python, from_python),
        (from_python, from_python),
        (from_sql, from_sql),
    ]


def test_finished_workflows_past_their_retention_go_with_their_dependencies(
    queue, store, poel_conn
):
    old = finished(queue, store, "old", "succeeded", "succeeded")
    recent = finished(queue, store, "recent", "succeeded", "succeeded")
    age(poel_conn, old, 30)
    age(poel_conn, recent, 2)
    # Running for two days: its first step ended long ago, its second still waits.
    running = enqueue_chain(queue, "running", "first", "second", "third")
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "succeeded")
    age(poel_conn, running, 48)
    # Cancelled while a step runs: not finished until that step ended.
    stopping = enqueue_chain(queue, "stopping", "a", "b")
    claim(store)
    queue.cancel_workflow(stopping)
    age(poel_conn, stopping, 48)
    assert queue.workflow(stopping).finished_at is None

    assert prune_all(store) == 1
    assert queue.workflow(old) is None
    assert dependencies(poel_conn, old) == 0
    for kept in (recent, running, stopping):
        assert queue.workflow(kept) is not None, kept
        assert dependencies(poel_conn, kept) > 0
    # The steps go by their own retention (these are still in the jobs table).
    assert poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE workflow_id = %s", [old]
    ).fetchone() == {"n": 2}


def test_a_workflow_with_a_failure_is_kept_as_the_dead_letter_is(queue, store, poel_conn):
    failed_30 = finished(queue, store, "failed 30 h ago", "failed", "cancelled")
    failed_50 = finished(queue, store, "failed 50 h ago", "succeeded", "failed")
    # Cancelled after a failure: kept as a failed one.
    flow = Workflow("failed, then cancelled")
    a = flow.step("a", T)
    flow.step("b", T, after=a, run_anyway=True)
    cancelled_after = queue.enqueue_workflow(flow)
    token, rows = claim(store)
    end(store, rows[0]["id"], token, "failed")
    queue.cancel_workflow(cancelled_after)
    cancelled = enqueue_chain(queue, "cancelled", "a", "b")
    queue.cancel_workflow(cancelled)
    for workflow_id in (failed_30, cancelled_after, cancelled):
        age(poel_conn, workflow_id, 30)
    age(poel_conn, failed_50, 50)
    states = {w: queue.workflow(w).state for w in (failed_30, failed_50, cancelled_after)}
    assert states == {failed_30: "failed", failed_50: "failed", cancelled_after: "cancelled"}
    assert queue.workflow(cancelled).failed_step is None  # kept as succeeded jobs are

    # POEL_RETAIN_FAILED_HOURS unset: every workflow with a failure is kept.
    assert prune_all(store, failed_hours=None) == 1
    assert queue.workflow(cancelled) is None
    # Failed ones past the longer of the two retentions.
    assert prune_all(store, failed_hours=48) == 1
    assert queue.workflow(failed_50) is None
    assert prune_all(store, failed_hours=40) == 0  # 30 hours < 40
    # Never before their succeeded steps' retention, however short the dead letter's.
    assert prune_all(store, failed_hours=12, succeeded_hours=36) == 0
    assert prune_all(store, failed_hours=12, succeeded_hours=29) == 2
    assert queue.workflow(failed_30) is None and queue.workflow(cancelled_after) is None


def test_a_prune_is_bounded_by_steps(queue, store, poel_conn):
    ids = [finished(queue, store, f"w{n}", *["succeeded"] * 4) for n in range(5)]
    for workflow_id in ids:
        age(poel_conn, workflow_id, 30)
    # Workflows while the steps before each are fewer than 10: 0, 4, 8; a full batch.
    assert store.prune_workflows(succeeded_hours=24, failed_hours=None, batch=10) == (3, 12)
    assert store.prune_workflows(succeeded_hours=24, failed_hours=None, batch=10) == (2, 8)
    assert store.prune_workflows(succeeded_hours=24, failed_hours=None, batch=10) == (0, 0)
    # One workflow bigger than a batch goes whole.
    big = Workflow("big")
    big.fan_out("part", T, [{}] * 30)
    big_id = queue.enqueue_workflow(big)
    token, rows = claim(store, limit=30)
    assert store.finish([outcome(r["id"], token, "succeeded") for r in rows])
    age(poel_conn, big_id, 30)
    assert store.prune_workflows(succeeded_hours=24, failed_hours=None, batch=10) == (1, 30)
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.workflows").fetchone() == {"n": 0}
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.job_dependencies").fetchone() == {
        "n": 0
    }


def test_the_pruner_prunes_workflows_and_a_pruned_one_reads_as_not_found(
    queue, store, poel_conn, poel_settings, poel_dsn, poel_cli
):
    workflow_id = finished(queue, store, "done", "succeeded", "succeeded")
    age(poel_conn, workflow_id, 30)
    log = Log()
    settings = poel_settings.model_copy(update={"retain_succeeded_hours": 24})
    assert Pruner(store, settings, log=log).prune() == 4  # its two steps, then it
    assert log.lines == [
        ("finished jobs pruned", {"jobs": 2}),
        ("finished workflows pruned", {"workflows": 1, "steps": 2}),
    ]

    assert queue.workflow(workflow_id) is None
    shown = poel_cli("workflows", "show", str(workflow_id), DATABASE_URL=poel_dsn)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert (
        f"no workflow with id {workflow_id} (never enqueued, or deleted past its retention)"
        in shown.stderr
    )
    with pytest.raises(WorkflowNotFound):
        queue.cancel_workflow(workflow_id)
    with pytest.raises(WorkflowNotFound):
        queue.retry_workflow(workflow_id)


def test_the_upgrade_gives_the_dependencies_enqueued_before_their_workflow(queue, store, poel_conn):
    kept = enqueue_chain(queue, "kept", "a", "b", "c")
    archived = finished(queue, store, "archived", "succeeded", "succeeded")
    store.make_done_partitions(back_s=3600, width_s=3600, ahead=2)
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=100) == 2
    gone = finished(queue, store, "gone", "succeeded", "succeeded")
    # As before 0027: no workflow on the dependencies, and a step deleted past its
    # retention leaves its dependency behind.
    poel_conn.execute("UPDATE poel.job_dependencies SET workflow_id = NULL")
    poel_conn.execute("DELETE FROM poel.jobs WHERE workflow_id = %s", [gone])
    poel_conn.execute("DELETE FROM poel.migrations WHERE plugin = 'poel-host' AND version = 27")

    assert migrations.migrate(poel_conn, "poel") == ["poel-host:0027_workflow_retention"]
    rows = poel_conn.execute(
        "SELECT workflow_id, count(*) AS n FROM poel.job_dependencies GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(r["workflow_id"], r["n"]) for r in rows] == [(kept, 2), (archived, 1)]
