"""The kit plugin authors test with (``poel_host.testing``): what its fixtures promise.

The bundled plugins' tests and the example plugin rely on these fixtures; here each
promise is checked on its own, with the test-only job types of poel-testjobs.
"""

from __future__ import annotations

from typing import Any

import pytest

from poel_host import JobCancelled, Workflow


def test_run_job_retry_runs_the_next_attempt_without_waiting(run_job: Any) -> None:
    first = run_job("test.flaky", {"key": "k", "fail_times": 2}, max_attempts=3)
    assert (first.state, first.row["attempts"]) == ("queued", 1)

    second = run_job.retry(first.id)
    third = run_job.retry(first.id)

    assert (second.state, second.row["attempts"]) == ("queued", 2)
    assert (third.state, third.row["attempts"]) == ("succeeded", 3)
    assert [e["event"] for e in third.logs] == ["job started", "job succeeded"]


def test_run_job_retry_refuses_a_job_that_is_not_queued(run_job: Any) -> None:
    done = run_job("test.noop", {})

    with pytest.raises(AssertionError, match="is not queued"):
        run_job.retry(done.id)


def test_poel_context_captures_logs_and_commits_each_block(
    poel_context: Any, poel_conn: Any
) -> None:
    poel_context.log.info("hello", n=1)
    with poel_context.connection() as conn:
        conn.execute(
            "INSERT INTO poel_test_runs (job_id, job_type, key, attempt, pid)"
            " VALUES (1, 't', 'kept', 1, 0)"
        )
    with pytest.raises(RuntimeError), poel_context.connection() as conn:
        conn.execute(
            "INSERT INTO poel_test_runs (job_id, job_type, key, attempt, pid)"
            " VALUES (1, 't', 'rolled back', 1, 0)"
        )
        raise RuntimeError("boom")

    keys = [r["key"] for r in poel_conn.execute("SELECT key FROM poel_test_runs")]
    assert keys == ["kept"]
    assert poel_context.events == ["hello"]
    assert poel_context.logs[0] == {
        "event": "hello",
        "n": 1,
        "log_level": "info",
        "jobId": 1,
        "jobType": "test",
        "attempt": 1,
    }


def test_poel_context_replace_and_cancel(poel_context: Any) -> None:
    last = poel_context.replace(attempt=3, max_attempts=3)
    last.log.warning("last try")

    assert (last.attempt, last.max_attempts, poel_context.attempt) == (3, 3, 1)
    assert last.logs is poel_context.logs
    assert poel_context.logs[-1]["attempt"] == 3
    assert not last.cancelled
    last.cancel()
    assert last.cancelled and last.wait_cancelled(5)
    with pytest.raises(JobCancelled):
        last.check_cancelled()


def test_poel_context_enqueues_validated_jobs(poel_context: Any, assert_enqueued: Any) -> None:
    from poel_host import InvalidPayload

    job_id = poel_context.enqueue("test.record", {"key": "follow-up"}, priority=5)

    [row] = assert_enqueued("test.record", {"key": "follow-up"}, count=1, state="queued")
    assert (row["id"], row["priority"]) == (job_id, 5)
    with pytest.raises(InvalidPayload):
        poel_context.enqueue("test.flaky", {"key": "x"})


def test_assert_enqueued_says_what_was_enqueued(poel_queue: Any, assert_enqueued: Any) -> None:
    poel_queue.enqueue("test.record", {"key": "a"})
    poel_queue.enqueue("test.record", {"key": "b"})

    assert len(assert_enqueued("test.record")) == 2
    assert_enqueued("test.record", {"key": "c"}, count=0)
    assert_enqueued("test.noop", count=0)
    with pytest.raises(AssertionError) as failure:
        assert_enqueued("test.record", {"key": "c"})
    message = str(failure.value)
    assert "expected at least one 'test.record' job(s) with payload including {'key': 'c'}" in (
        message
    )
    assert "{'key': 'a'}" in message and "{'key': 'b'}" in message
    with pytest.raises(AssertionError, match="expected exactly 1"):
        assert_enqueued("test.record", count=1)


def test_run_job_workflow_runs_each_step_once_its_dependencies_allow(
    run_job: Any, tmp_path
) -> None:
    flow = Workflow("diamond")
    a = flow.step("a", "flows.greenlet", {"value": 1})
    b = flow.step("b", "flows.thread", {"value": 2}, after=a)
    c = flow.step("c", "flows.greenlet", {"value": 3}, after=a)
    flow.step("d", "flows.greenlet", {"value": 4}, after=[b, c])
    run = run_job.workflow(flow)
    assert run.state == "succeeded"
    assert {name: step.row["attempts"] for name, step in run.steps.items()} == dict.fromkeys(
        "abcd", 1
    )
    assert run.steps["d"].result["seen"] == {
        "b": run.steps["b"].result,
        "c": run.steps["c"].result,
    }
    assert run.steps["b"].logs, "each step's own log events"


def test_run_job_workflow_runs_a_retry_at_once_and_cancels_after_a_failure(run_job: Any) -> None:
    flow = Workflow("branches")
    a = flow.step("a", "test.flaky", {"key": "k", "fail_times": 1}, max_attempts=2)
    bad = flow.step("bad", "flows.greenlet", {"fail": True}, after=a)
    flow.step("after_bad", "flows.greenlet", after=bad)
    run = run_job.workflow(flow)
    assert run.steps["a"].row["attempts"] == 2 and run.steps["a"].state == "succeeded"
    assert (run.state, run.workflow.failed_step) == ("failed", "bad")
    assert run.steps["after_bad"].state == "cancelled" and run.steps["after_bad"].logs == []
    # Without retries the run stops with the step queued for its retry.
    flow = Workflow("no retries")
    flow.step("a", "test.flaky", {"key": "k2", "fail_times": 1}, max_attempts=2)
    run = run_job.workflow(flow, retries=False)
    assert (run.state, run.steps["a"].state, run.steps["a"].outcome) == (
        "running",
        "queued",
        "retry",
    )
