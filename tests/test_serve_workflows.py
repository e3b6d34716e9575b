"""Workflows through a real ``poel-host serve`` (issue 20): a diamond whose last step
starts only after both middle steps ended (by the handlers' own log of start and end
times, not only the database's) and reads their results; the middle steps run side by
side, on a thread and in a child process. Serve polls once a minute, so only the release's
NOTIFY can start a released step within the test's time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from poel_host import Queue, Workflow

pytestmark = pytest.mark.process

PLUGINS = "poel-testworkflows"


def events(log: Path) -> dict[tuple[int, str], float]:
    found = {}
    for line in log.read_text().splitlines():
        job_id, what, at = line.split()
        found[(int(job_id), what)] = float(at)
    return found


def test_a_diamond_runs_in_order_and_its_last_step_reads_both_results(serve, poel_dsn, tmp_path):
    serve(
        POEL_LOAD_PLUGINS=PLUGINS,
        POEL_PROCESSES=1,
        POEL_THREADS=2,
        POEL_POLL_INTERVAL_MS=60_000,
    )
    log = tmp_path / "steps.log"
    flow = Workflow("diamond")
    a = flow.step("a", "flows.greenlet", {"value": "a", "log": str(log)})
    # b and c each wait for the other to have started: they can end only side by side
    # (timed sleeps once asserted it, and a loaded machine started c after b's end).
    meet_b, meet_c = str(tmp_path / "b.started"), str(tmp_path / "c.started")
    b_payload = {"value": "b", "log": str(log), "touch": meet_b, "wait_for": meet_c}
    c_payload = {"value": "c", "log": str(log), "touch": meet_c, "wait_for": meet_b}
    b = flow.step("b", "flows.thread", b_payload, after=a)
    c = flow.step("c", "flows.process", c_payload, after=a)
    flow.step("d", "flows.greenlet", {"value": "d", "log": str(log)}, after=[b, c])
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        started = time.monotonic()
        workflow_id = queue.enqueue_workflow(flow)
        while True:
            state = queue.workflow(workflow_id)
            assert state is not None
            if state.finished_at is not None or time.monotonic() - started > 30:
                break
            time.sleep(0.1)
        assert state.state == "succeeded", state
        ids = {s.name: s.job_id for s in state.steps}
        d_result = queue.get(ids["d"])["result"]
    seen = events(log)
    assert seen[(ids["b"], "start")] >= seen[(ids["a"], "end")]
    assert seen[(ids["c"], "start")] >= seen[(ids["a"], "end")]
    # b and c ran side by side; d started after both ended
    assert seen[(ids["b"], "start")] < seen[(ids["c"], "end")]
    assert seen[(ids["c"], "start")] < seen[(ids["b"], "end")]
    assert seen[(ids["d"], "start")] >= max(seen[(ids["b"], "end")], seen[(ids["c"], "end")])
    assert {k: v["value"] for k, v in d_result["seen"].items()} == {"b": "b", "c": "c"}
    # released by NOTIFY, not by a poll of a minute
    assert time.monotonic() - started < 20


def test_a_failing_branch_cancels_its_dependents_and_fails_the_workflow(serve, poel_dsn):
    serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=2)
    flow = Workflow("failing")
    a = flow.step("a", "flows.greenlet", {"value": "a"})
    b = flow.step("b", "flows.thread", {"fail": True}, after=a)
    c = flow.step("c", "flows.process", {"value": "c"}, after=a)
    flow.step("d", "flows.greenlet", {}, after=[b, c])
    flow.step("report", "flows.process", {"value": "r"}, after=[b, c], run_anyway=True)
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        workflow_id = queue.enqueue_workflow(flow)
        deadline = time.monotonic() + 30
        while (state := queue.workflow(workflow_id)) is not None and state.finished_at is None:
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state is not None
        assert (state.state, state.failed_step) == ("failed", "b")
        assert "failed on purpose" in (state.failed_error or "")
        assert {s.name: s.state for s in state.steps} == {
            "a": "succeeded",
            "b": "failed",
            "c": "succeeded",
            "d": "cancelled",
            "report": "succeeded",
        }
        seen = queue.get(state.step("report").job_id)["result"]["seen"]
    assert {k: v["value"] for k, v in seen.items()} == {"c": "c"}
