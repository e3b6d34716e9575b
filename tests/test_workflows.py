"""Workflows (issue 20) in the database: the builder's refusals, the atomic enqueue (from
Python and SQL), and the release of waiting steps by the statements that end their
dependencies, driven here through the store's claim and outcome statements (the worker's
own), so each test says exactly which step ends when.

Handlers reading their dependencies' results on each executor are in
``test_workflow_steps.py``; a real ``serve`` running a diamond in ``test_serve_workflows.py``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from poel_host import InvalidPayload, InvalidWorkflow, Queue, UnknownJobType, Workflow
from poel_host.store import Store

T = "wf.step"  # a job type no plugin defines: enqueued with allow_unknown


@pytest.fixture
def queue(poel_dsn):
    made = Queue(poel_dsn, jobs={}, allow_unknown=True)
    yield made
    made.close()


@pytest.fixture
def store(poel_queue):
    return poel_queue._store


def claim(store: Store, limit: int = 1000) -> dict[str, tuple[int, str]]:
    """Claim every due step: {step name: (job id, lease token)}."""
    token = str(uuid.uuid4())
    rows = store.claim_jobs(
        job_types=[T], queues=None, limit=limit, owner="test", token=token, lease_ms=60_000
    )
    names = steps_by_id(store, [r["id"] for r in rows])
    return {names[r["id"]]: (r["id"], token) for r in rows}


def steps_by_id(store: Store, ids: list[int]) -> dict[int, str]:
    def read(conn: Any) -> dict[int, str]:
        found = conn.execute("SELECT id, step FROM poel.jobs WHERE id = ANY(%s)", [ids])
        return {row["id"]: row["step"] for row in found}

    return store._run(read)


def finish(store: Store, held: dict[str, tuple[int, str]], state: str = "succeeded", **kw):
    error = kw.get("error")
    result = kw.get("result")
    rows = [
        (job_id, token, state, error, 0.0, None, result, None, None)
        for job_id, token in held.values()
    ]
    return store.finish(rows)


def states(poel_conn, workflow_id: int) -> dict[str, str]:
    rows = poel_conn.execute(
        "SELECT step, state::text AS state, ready FROM poel.jobs WHERE workflow_id = %s",
        [workflow_id],
    ).fetchall()
    return {
        r["step"]: "waiting" if r["state"] == "queued" and not r["ready"] else r["state"]
        for r in rows
    }


def diamond() -> Workflow:
    flow = Workflow("diamond")
    a = flow.step("a", T)
    b = flow.step("b", T, after=a)
    c = flow.step("c", T, after=a)
    flow.step("d", T, after=[b, c])
    return flow


# The builder ------------------------------------------------------------------------------


def test_the_builder_refuses_what_cannot_be_a_workflow():
    flow = Workflow("w")
    a = flow.step("a", T)
    with pytest.raises(InvalidWorkflow, match="step 'a' is added twice"):
        flow.step("a", T)
    with pytest.raises(InvalidWorkflow, match="waits for 'nope', which is not a step added"):
        flow.step("b", T, after="nope")
    other = Workflow("other").step("x", T)
    with pytest.raises(InvalidWorkflow, match="waits for step 'x' of another workflow"):
        flow.step("b", T, after=other)
    with pytest.raises(InvalidWorkflow, match="run_at and delay are for a step that waits"):
        flow.step("b", T, after=a, delay=5)
    with pytest.raises(InvalidWorkflow, match="a step needs a name"):
        flow.step("", T)
    with pytest.raises(InvalidWorkflow, match="a workflow needs a name"):
        Workflow("")
    with pytest.raises(InvalidWorkflow, match="a chain's link is"):
        flow.chain(("only",))
    assert [s.name for s in flow.steps] == ["a"]  # nothing refused was added


def test_chain_and_fan_out_name_their_steps_and_dependencies():
    flow = Workflow("shapes")
    first, second = flow.chain(("fetch", T, {"n": 1}), ("parse", T))
    parts = flow.fan_out("part", T, [{"i": 0}, {"i": 1}, {"i": 2}], after=second)
    merge = flow.step("merge", T, after=parts)
    assert (first.after, second.after) == ((), ("fetch",))
    assert [p.name for p in parts] == ["part[0]", "part[1]", "part[2]"]
    assert {p.after for p in parts} == {("parse",)}
    assert merge.after == ("part[0]", "part[1]", "part[2]")


# Atomic enqueue ----------------------------------------------------------------------------


def test_an_invalid_step_payload_stores_nothing(poel_queue, poel_conn):
    flow = Workflow("bad")
    a = flow.step("a", "process_new_record", {"record_id": 1})
    flow.step("b", "process_new_record", {"record_id": "not a number"}, after=a)
    with pytest.raises(InvalidPayload, match="workflow 'bad', step 'b'"):
        poel_queue.enqueue_workflow(flow)
    flow = Workflow("unknown")
    flow.step("a", "no_such_type")
    with pytest.raises(UnknownJobType, match="workflow 'unknown', step 'a'"):
        poel_queue.enqueue_workflow(flow)
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.workflows").fetchone()["n"] == 0


def test_a_step_whose_unique_key_is_held_stores_nothing(queue, poel_conn):
    queue.enqueue(T, {}, unique_key="k")
    flow = Workflow("dup")
    a = flow.step("a", T)
    flow.step("b", T, after=a, unique_key="k")
    with pytest.raises(InvalidWorkflow, match="unique_key is held by a live job"):
        queue.enqueue_workflow(flow)
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 1
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.workflows").fetchone()["n"] == 0


def test_a_workflow_in_a_rolled_back_transaction_leaves_nothing(queue, poel_dsn, poel_conn):
    with psycopg.connect(poel_dsn) as conn:
        queue.enqueue_workflow(diamond(), connection=conn)
        conn.execute('SELECT poel.enqueue_workflow(\'sql\', \'[{"step": "a", "job_type": "x"}]\')')
        conn.rollback()
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.workflows").fetchone()["n"] == 0
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.job_dependencies").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            '[{"step": "a", "job_type": "x"}, {"step": "a", "job_type": "x"}]',
            "step names must be unique: a used more than once",
        ),
        (
            '[{"step": "a", "job_type": "x", "after": ["zz"]}]',
            'a step waits for a step the workflow does not have: a \\(after "zz"\\)',
        ),
        (
            '[{"step": "a", "job_type": "x", "after": ["c"]}, {"step": "b", "job_type": "x",'
            ' "after": ["a"]}, {"step": "c", "job_type": "x", "after": ["b"]},'
            ' {"step": "z", "job_type": "x"}]',
            "in a cycle: a waits for c waits for b waits for a",
        ),
        ('[{"step": "a"}]', 'step #1 must be an object with a "step" name, a "job_type"'),
        (
            '[{"step": "a", "job_type": "x"}, {"step": "b", "job_type": "x", "payload": [1]}]',
            'step #2 must be an object .* "payload" an object',
        ),
        ("[]", "steps must be a non-empty JSON array"),
        (
            '[{"step": "a", "job_type": "x"}, {"step": "b", "job_type": "x", "after": ["a"],'
            ' "run_at": "2030-01-01T00:00:00Z"}]',
            "run_at is for steps without dependencies",
        ),
    ],
)
def test_sql_enqueue_names_what_is_wrong(poel_conn, steps, message):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        poel_conn.execute("SELECT poel.enqueue_workflow('w', %s::jsonb)", [steps])
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0


def test_waiting_steps_are_neither_claimed_nor_promoted(queue, store, poel_conn):
    workflow_id = queue.enqueue_workflow(diamond())
    assert store.promote_due(limit=100) == 0
    assert set(claim(store)) == {"a"}
    assert states(poel_conn, workflow_id) == {
        "a": "running",
        "b": "waiting",
        "c": "waiting",
        "d": "waiting",
    }
    shown = queue.workflow(workflow_id)
    assert shown is not None and shown.state == "running"
    assert shown.step("d").state == "waiting" and shown.step("d").after == ("b", "c")


def test_a_step_lists_what_it_waits_for_in_the_order_the_workflow_added_it(queue):
    """By name, part[10] would come before part[2]."""
    flow = Workflow("ordered")
    start = flow.step("start", T)
    parts = flow.fan_out("part", T, [{"i": i} for i in range(12)], after=start)
    flow.step("z", T)
    flow.step("merge", T, after=[*parts, "z"])
    shown = queue.workflow(queue.enqueue_workflow(flow))
    assert shown is not None
    assert shown.step("merge").after == (*(f"part[{i}]" for i in range(12)), "z")


# Release on success --------------------------------------------------------------------------


def test_a_diamond_is_released_in_order(queue, store, poel_conn):
    workflow_id = queue.enqueue_workflow(diamond())
    finish(store, claim(store))
    b_and_c = claim(store)
    assert set(b_and_c) == {"b", "c"}
    finish(store, {"b": b_and_c["b"]}, result='{"from": "b"}')
    assert claim(store) == {}  # d still waits for c
    assert states(poel_conn, workflow_id)["d"] == "waiting"
    finish(store, {"c": b_and_c["c"]})
    last = claim(store)
    assert set(last) == {"d"}
    finish(store, last)
    shown = queue.workflow(workflow_id)
    assert shown is not None
    assert (shown.state, shown.failed_step) == ("succeeded", None)
    assert shown.finished_at is not None
    assert [s.state for s in shown.steps] == ["succeeded"] * 4
    assert all(s.duration is not None and s.duration >= 0 for s in shown.steps)


def test_a_chain_from_sql_runs_one_step_at_a_time(poel_conn, store):
    workflow_id = poel_conn.execute(
        "SELECT poel.enqueue_workflow('chain', %s::jsonb) AS id",
        [
            '[{"step": "one", "job_type": "wf.step"},'
            ' {"step": "two", "job_type": "wf.step", "after": ["one"]},'
            ' {"step": "three", "job_type": "wf.step", "after": ["two"]}]'
        ],
    ).fetchone()["id"]
    order = []
    while held := claim(store):
        assert len(held) == 1
        order += list(held)
        finish(store, held)
    assert order == ["one", "two", "three"]
    row = poel_conn.execute("SELECT * FROM poel.workflows WHERE id = %s", [workflow_id]).fetchone()
    assert (row["state"], row["steps_left"]) == ("succeeded", 0)


def test_a_released_step_wakes_the_idle_workers(queue, store, poel_dsn):
    queue.enqueue_workflow(diamond())
    held = claim(store)
    with psycopg.connect(poel_dsn, autocommit=True) as listener:
        listener.execute("LISTEN poel_jobs")
        finish(store, held)
        heard = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in heard] == ["poel"]


# Failure ----------------------------------------------------------------------------------------


def test_a_failed_step_cancels_its_dependents_but_not_those_that_run_anyway(
    queue, store, poel_conn
):
    flow = Workflow("failing")
    a = flow.step("a", T)
    b = flow.step("b", T, after=a)
    c = flow.step("c", T, after=a)
    d = flow.step("d", T, after=b)  # cancelled in turn, for b
    flow.step("cleanup", T, after=[b, c, d], run_anyway=True)
    workflow_id = queue.enqueue_workflow(flow)
    finish(store, claim(store))
    b_and_c = claim(store)
    finish(store, {"b": b_and_c["b"]}, state="failed", error="boom")
    shown = queue.workflow(workflow_id)
    assert shown is not None
    assert (shown.state, shown.failed_step, shown.failed_error) == ("failed", "b", "boom")
    assert shown.step("d").state == "cancelled"
    assert "step b of workflow" in (shown.step("d").error or "")
    assert shown.step("cleanup").state == "waiting"  # still waits for c
    assert shown.finished_at is None
    finish(store, {"c": b_and_c["c"]})
    assert set(claim(store)) == {"cleanup"}
    shown = queue.workflow(workflow_id)
    assert shown is not None and shown.state == "failed" and shown.failed_step == "b"


def test_an_operator_cancel_of_a_waiting_step_fails_the_workflow(queue, store, poel_conn):
    workflow_id = queue.enqueue_workflow(diamond())
    d = poel_conn.execute(
        "SELECT id FROM poel.jobs WHERE workflow_id = %s AND step = 'd'", [workflow_id]
    ).fetchone()["id"]
    assert queue.cancel(d)
    finish(store, claim(store))
    finish(store, claim(store))
    shown = queue.workflow(workflow_id)
    assert shown is not None
    assert (shown.state, shown.failed_step, shown.failed_error) == ("failed", "d", "cancelled")
    assert [s.state for s in shown.steps] == ["succeeded", "succeeded", "succeeded", "cancelled"]
    assert shown.finished_at is not None


def test_a_job_outside_a_workflow_is_unaffected(queue, store, poel_conn):
    job_id = queue.enqueue(T, {})
    held = claim(store)
    assert store.finish([(job_id, held[None][1], "succeeded", None, 0, None, None, None, None)])
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.workflows").fetchone()["n"] == 0
    assert queue.workflow(12345) is None


# How a waiting step reads ---------------------------------------------------------------------


def test_a_waiting_step_reads_as_waiting_everywhere(queue, poel_dsn, poel_cli, dashboard):
    workflow_id = queue.enqueue_workflow(diamond())
    shown = queue.workflow(workflow_id)
    assert shown is not None
    d = shown.step("d").job_id
    job = queue.get(d)  # its run_at is readable by Python (it is not 'infinity')
    assert job is not None
    assert (job["state"], job["waiting"], job["waiting_on"]) == ("queued", True, 2)
    assert (job["workflow_id"], job["step"]) == (workflow_id, "d")
    assert queue.get(shown.step("a").job_id)["waiting"] is False
    listed = poel_cli("jobs", "list", DATABASE_URL=poel_dsn).stdout
    assert [line.split()[2] for line in listed.splitlines()[1:]] == [
        "waiting",
        "waiting",
        "waiting",
        "queued",
    ]
    assert '"waiting": true' in poel_cli("jobs", "show", str(d), DATABASE_URL=poel_dsn).stdout
    browser = dashboard()
    page = browser.get(f"/jobs/{d}").text
    assert ">waiting</td>" in page and "step d, waiting for 2 of its dependencies" in page
    assert browser.get("/jobs").text.count(">waiting</td>") == 3


def test_no_statement_calls_steps_ended_for_jobs_outside_a_workflow(queue, store, poel_conn):
    """steps_ended made to raise: every path that ends (or requeues) a job outside a
    workflow still works, so none of them called it."""
    poel_conn.execute(
        "CREATE OR REPLACE FUNCTION poel.steps_ended(ids bigint[]) RETURNS void"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'steps_ended called'; END $$"
    )
    ids = [queue.enqueue(T, {}, max_attempts=1) for _ in range(7)]
    token = str(uuid.uuid4())
    rows = store.claim_jobs(
        job_types=[T], queues=None, limit=6, owner="test", token=token, lease_ms=60_000
    )
    held = [(r["id"], token) for r in sorted(rows, key=lambda r: r["id"])]
    assert len(held) == 6
    (ok, t1), (res, t2), (bad, t3), (snoozed, t4), (handed, t5), (lost, t6) = held

    def outcome(job_id, token, state, result=None, delay=0.0):
        return (
            job_id,
            token,
            state,
            "e" if state == "failed" else None,
            delay,
            None,
            result,
            None,
            None,
        )

    written = store.finish(
        [
            outcome(ok, t1, "succeeded"),
            outcome(res, t2, "succeeded", result="1"),
            outcome(bad, t3, "failed"),
            outcome(snoozed, t4, "snoozed", delay=60_000),
        ]
    )
    assert written == {ok, res, bad, snoozed}
    assert store.release_jobs([(handed, t5)], started=True, max_handbacks=0) == {handed: True}
    assert store.release_claims([t6]) == [lost]
    assert queue.cancel(ids[-1])
    queue.enqueue(T, {}, max_attempts=1)
    store.claim_jobs(
        job_types=[T], queues=None, limit=1, owner="gone", token=str(uuid.uuid4()), lease_ms=1
    )
    time.sleep(0.01)
    assert [r["state"] for r in store.recover_expired(base_ms=1, max_ms=1)] == ["failed"]
    with pytest.raises(psycopg.errors.RaiseException, match="steps_ended called"):
        poel_conn.execute("SELECT poel.steps_ended(ARRAY[1]::bigint[])")


def test_a_step_failed_by_a_counted_hand_back_cascades(queue, store):
    flow = Workflow("handed back")
    a = flow.step("a", T, max_attempts=1)
    flow.step("b", T, after=a)
    workflow_id = queue.enqueue_workflow(flow)
    held = claim(store)
    assert store.release_jobs([held["a"]], started=True, max_handbacks=0) == {held["a"][0]: True}
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.failed_step) == ("failed", "a")
    assert "interrupted by a shutdown" in (state.failed_error or "")
    assert [s.state for s in state.steps] == ["failed", "cancelled"]


def test_a_handed_back_or_retried_step_is_not_an_end(queue, store):
    workflow_id = queue.enqueue_workflow(diamond())
    held = claim(store)
    assert store.release_jobs([held["a"]], started=False, max_handbacks=3)
    held = claim(store)
    job_id, token = held["a"]
    store.finish([(job_id, token, "queued", "try again", 0.0, None, None, None, None)])
    state = queue.workflow(workflow_id)
    assert state is not None and state.state == "running"
    assert [s.state for s in state.steps] == ["queued", "waiting", "waiting", "waiting"]


def test_a_running_step_cancelled_then_handed_back_ends_cancelled_and_cascades(queue, store):
    """The hand-back would queue it again; jobs_cancel_requested makes it cancelled, and
    the hand-back's statement carries that end to the workflow."""
    workflow_id = queue.enqueue_workflow(diamond())
    held = claim(store)
    assert store.cancel_job(held["a"][0]) == "requested"
    assert store.release_jobs([held["a"]], started=True, max_handbacks=3)
    state = queue.workflow(workflow_id)
    assert state is not None
    assert (state.state, state.failed_step, state.failed_error) == ("failed", "a", "cancelled")
    assert [s.state for s in state.steps] == ["cancelled"] * 4
    assert state.finished_at is not None
