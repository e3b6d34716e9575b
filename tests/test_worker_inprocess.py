"""The worker's job path in-process (``Worker.run_once``): claim, validate, run, record;
retries, hooks, what a handler gets, and handlers that misbehave."""

from __future__ import annotations

import datetime as dt
import gc
import time
import weakref

import gevent
import pytest
import structlog
from pydantic import BaseModel, field_validator

from poel_host import Job, JobContext, JobRequest, Queue, hookimpl
from poel_host.errors import InvalidPayload
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker


def run_until_claimed(worker: Worker, job_id: int, timeout: float = 10.0) -> None:
    """Run what is due until ``job_id`` has run (a retry becomes due after its backoff)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job_id in worker.run_once():
            return
        gevent.sleep(0.02)
    raise AssertionError(f"job {job_id} was not claimed within {timeout}s")


def get_row(conn, job_id: int) -> dict:
    return conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()


# With the poel_host.testing fixtures -----------------------------------------------------


def test_success(run_job, poel_conn):
    result = run_job("test.record", {"key": "ok"})
    assert result.state == "succeeded"
    assert result.row["attempts"] == 1
    assert result.row["finished_at"] is not None
    assert result.row["lease_owner"] is None
    assert result.error is None
    runs = poel_conn.execute("SELECT key, attempt FROM poel_test_runs").fetchall()
    assert runs == [{"key": "ok", "attempt": 1}]


def test_retry_then_success(run_job, poel_conn):
    first = run_job("test.flaky", {"key": "f", "fail_times": 1})
    assert first.state == "queued"
    assert first.row["attempts"] == 1
    assert first.error == "RuntimeError: flaky failure 1"
    [error] = first.row["errors"]
    assert (error["attempt"], error["error"]) == (1, "RuntimeError: flaky failure 1")
    assert first.row["finished_at"] is None  # a retry is not finished
    assert first.logs[0]["event"] == "job started"
    assert first.logs[-1]["event"] == "job retry scheduled"
    assert 150 <= first.logs[-1]["retry_in_ms"] <= 250  # backoff=0.2 s, +-25% jitter

    run_until_claimed(run_job.worker, first.id)
    row = get_row(poel_conn, first.id)
    assert (row["state"], row["attempts"]) == ("succeeded", 2)
    assert row["last_error"] == "RuntimeError: flaky failure 1"  # history is kept
    runs = poel_conn.execute("SELECT attempt FROM poel_test_runs ORDER BY id").fetchall()
    assert [r["attempt"] for r in runs] == [1, 2]


def test_last_attempt_fails_with_error_history(run_job):
    result = run_job("test.fail", {"key": "x"}, max_attempts=1)
    assert result.state == "failed"
    assert result.error == "ValueError: this job always fails"
    assert [e["attempt"] for e in result.row["errors"]] == [1]
    assert result.logs[-1]["event"] == "job failed"


def test_invalid_stored_payload_fails_without_retry(run_job, poel_conn):
    # stored unvalidated, as from SQL
    job_id = poel_conn.execute(
        "SELECT poel.enqueue('test.flaky', '{\"fail_times\": -1}') AS id"
    ).fetchone()["id"]
    assert job_id in run_job.worker.run_once()
    row = get_row(poel_conn, job_id)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "fail_times: Input should be greater than or equal to 0" in row["last_error"]
    assert poel_conn.execute("SELECT count(*) AS n FROM poel_test_runs").fetchone()["n"] == 0


# With a fake plugin beside poel-testjobs -------------------------------------------------


class Payload(BaseModel):
    key: str = ""


seen: list[JobContext] = []


def capture(payload: Payload, ctx: JobContext) -> None:
    seen.append(ctx)
    ctx.log.info("handler says hello", key=payload.key)


def raise_system_exit(payload: Payload, ctx: JobContext) -> None:
    raise SystemExit(3)


def raise_keyboard_interrupt(payload: Payload, ctx: JobContext) -> None:
    raise KeyboardInterrupt


def return_value(payload: Payload, ctx: JobContext) -> object:
    return {"ignored": True}


def too_slow(payload: Payload, ctx: JobContext) -> None:
    time.sleep(30)  # cooperative: gevent patched time.sleep


naps: list[tuple[str, str]] = []


def nap(payload: Payload, ctx: JobContext) -> None:
    naps.append(("start", payload.key))
    time.sleep(0.3)  # cooperative
    naps.append(("end", payload.key))


def follow_up(payload: Payload, ctx: JobContext) -> None:
    ctx.enqueue("test.noop", {"key": f"after {ctx.job_id}"}, delay=60)


def follow_up_then_fail(payload: Payload, ctx: JobContext) -> None:
    with ctx.connection() as conn:
        ctx.enqueue("test.noop", {"key": "rolled back"}, connection=conn)
        raise RuntimeError("after the follow-up")


def follow_up_invalid(payload: Payload, ctx: JobContext) -> None:
    ctx.enqueue("test.flaky", {"fail_times": "many"})


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def raise_unprintable(payload: Payload, ctx: JobContext) -> None:
    raise Unprintable


def broken_backoff(attempt: int) -> float:
    raise ZeroDivisionError("a plugin's backoff function has a bug")


class Fussy(BaseModel):
    """A model whose validator has a bug: it raises AttributeError, which pydantic does not
    turn into a ValidationError."""

    name: object = None

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower()  # type: ignore[attr-defined]


class Fake:
    """A plugin object: job types for these tests and recording lifecycle hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def register_jobs(self):
        return [
            Job(type="fake.capture", schema=Payload, handler=capture, queue="fakes"),
            Job(type="fake.exit", schema=Payload, handler=raise_system_exit),
            Job(type="fake.interrupt", schema=Payload, handler=raise_keyboard_interrupt),
            Job(type="fake.returns", schema=Payload, handler=return_value),
            Job(type="fake.slow", schema=Payload, handler=too_slow, timeout=0.2),
            Job(type="fake.follow_up", schema=Payload, handler=follow_up),
            Job(type="fake.follow_up_fail", schema=Payload, handler=follow_up_then_fail),
            Job(type="fake.follow_up_invalid", schema=Payload, handler=follow_up_invalid),
            Job(type="fake.unprintable", schema=Payload, handler=raise_unprintable),
            Job(type="fake.fussy", schema=Fussy, handler=capture),
            Job(type="fake.nap", schema=Payload, handler=nap),
            Job(
                type="fake.bad_backoff",
                schema=Payload,
                handler=raise_unprintable,
                backoff=broken_backoff,
            ),
        ]

    @hookimpl
    def job_started(self, ctx):
        self.calls.append(("started", ctx.job_id, ctx.job_type))

    @hookimpl
    def job_finished(self, ctx, outcome, duration, error):
        self.calls.append(("finished", ctx.job_id, outcome, duration, error))


class Broken:
    @hookimpl
    def job_started(self):
        raise RuntimeError("observability plugin is broken")

    @hookimpl
    def job_finished(self, ctx):
        raise RuntimeError("observability plugin is broken")


class Exiting:
    """An observability plugin whose hooks raise what ``except Exception`` does not catch."""

    @hookimpl
    def job_started(self):
        raise SystemExit(1)

    @hookimpl
    def job_finished(self):
        raise KeyboardInterrupt


class Harness:
    def __init__(self, settings, extra):
        self.fake = Fake()
        self.plugins = load_plugins(["poel-testjobs"], extra=[("fake", self.fake), *extra])
        assert self.plugins.failed == []
        self.worker = Worker(settings, self.plugins, log=get_logger())
        self.queue = Queue(settings.dsn, jobs=self.plugins.jobs)

    def run(self, job_type: str, payload=None, **options) -> int:
        job_id = self.queue.enqueue(job_type, payload, **options)
        assert job_id in self.worker.run_once()
        return job_id

    def finished(self, job_id: int) -> tuple:
        [call] = [c for c in self.fake.calls if c[0] == "finished" and c[1] == job_id]
        return call

    def close(self):
        self.worker.close()
        self.queue.close()


@pytest.fixture
def harness(poel_settings):
    h = Harness(poel_settings, [])
    yield h
    h.close()


def test_hooks_get_outcome_and_duration(harness, poel_conn):
    ok = harness.run("test.record", {"key": "a"})
    retry = harness.run("test.flaky", {"key": "b", "fail_times": 5})
    failed = harness.run("test.fail", {"key": "c"}, max_attempts=1)

    assert ("started", ok, "test.record") in harness.fake.calls
    _, _, outcome, duration, error = harness.finished(ok)
    assert (outcome, error) == ("succeeded", None)
    assert isinstance(duration, float) and 0 <= duration < 5
    assert harness.finished(retry)[2:5:2] == ("retry", "RuntimeError: flaky failure 1")
    assert harness.finished(failed)[2:5:2] == ("failed", "ValueError: this job always fails")
    # started comes before finished for each job
    for job_id in (ok, retry, failed):
        order = [c[0] for c in harness.fake.calls if c[1] == job_id]
        assert order == ["started", "finished"]


def test_broken_hooks_do_not_affect_jobs(poel_settings, poel_conn):
    h = Harness(poel_settings, [("broken", Broken())])
    try:
        job_id = h.run("test.record", {"key": "a"})
        assert get_row(poel_conn, job_id)["state"] == "succeeded"
        assert h.finished(job_id)[2] == "succeeded"  # the other plugin still got its call
    finally:
        h.close()


def test_hooks_raising_system_exit_do_not_strand_jobs(poel_settings, poel_conn):
    h = Harness(poel_settings, [("exiting", Exiting())])
    try:
        job_id = h.run("test.record", {"key": "a"})
        assert get_row(poel_conn, job_id)["state"] == "succeeded"
        assert h.finished(job_id)[2] == "succeeded"
        assert h.worker.held == {}  # nothing left holding a lease
    finally:
        h.close()


@pytest.mark.parametrize(
    ("job_type", "error"),
    [
        ("fake.exit", "SystemExit: 3"),
        ("fake.interrupt", "KeyboardInterrupt"),
        ("fake.slow", "timed out after 0.2s"),
        ("fake.unprintable", "Unprintable"),
    ],
)
def test_misbehaving_handler_is_retried_and_the_worker_survives(
    harness, poel_conn, job_type, error
):
    job_id = harness.run(job_type)
    row = get_row(poel_conn, job_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("queued", 1, error)
    assert harness.finished(job_id)[2:5:2] == ("retry", error)
    # last attempt: failed, not retried
    last = harness.run(job_type, max_attempts=1)
    assert get_row(poel_conn, last)["state"] == "failed"
    assert harness.finished(last)[2] == "failed"
    # the same worker goes on running jobs
    after = harness.run("test.record", {"key": "after"})
    assert get_row(poel_conn, after)["state"] == "succeeded"


def test_handler_returning_a_value_succeeds(harness, poel_conn):
    job_id = harness.run("fake.returns")
    assert get_row(poel_conn, job_id)["state"] == "succeeded"
    assert harness.finished(job_id)[2] == "succeeded"


def test_job_context(harness, poel_conn, poel_settings):
    seen.clear()
    job_id = harness.queue.enqueue("fake.capture", {"key": "ctx"}, max_attempts=4)
    import structlog

    with structlog.testing.capture_logs() as logs:
        assert harness.worker.run_once() == [job_id]
    row = get_row(poel_conn, job_id)
    [ctx] = seen
    assert ctx.job_id == job_id
    assert ctx.job_type == "fake.capture"
    assert ctx.attempt == 1
    assert ctx.max_attempts == 4
    assert ctx.queue == "fakes"
    assert ctx.enqueued_at == row["created_at"]
    assert isinstance(ctx.enqueued_at, dt.datetime) and ctx.enqueued_at.tzinfo is not None
    assert ctx.settings is poel_settings
    assert ctx.cancelled is False
    [hello] = [entry for entry in logs if entry["event"] == "handler says hello"]
    assert hello["jobId"] == job_id
    assert hello["jobType"] == "fake.capture"
    assert hello["attempt"] == 1
    assert hello["key"] == "ctx"
    # the worker's own lines about the job carry the same context
    started = [entry for entry in logs if entry["event"] == "job started"]
    assert [(e["jobId"], e["jobType"], e["attempt"]) for e in started] == [
        (job_id, "fake.capture", 1)
    ]


def test_context_enqueue_follow_up(harness, enqueued):
    job_id = harness.run("fake.follow_up")
    [follow] = enqueued("test.noop")
    assert follow["payload"] == {"key": f"after {job_id}"}
    assert follow["state"] == "queued"
    assert enqueued("fake.follow_up")[0]["state"] == "succeeded"


def test_context_enqueue_in_the_handlers_transaction_rolls_back(harness, enqueued):
    job_id = harness.run("fake.follow_up_fail")
    assert enqueued("test.noop") == []
    [row] = enqueued("fake.follow_up_fail")
    assert (row["id"], row["state"]) == (job_id, "queued")
    assert row["last_error"] == "RuntimeError: after the follow-up"


def test_context_enqueue_validates_the_follow_up(harness, enqueued):
    harness.run("fake.follow_up_invalid")
    [row] = enqueued("fake.follow_up_invalid")
    assert row["state"] == "queued"
    assert row["last_error"].startswith("InvalidPayload: invalid payload for 'test.flaky'")
    assert enqueued("test.flaky") == []


def test_many_jobs_run_concurrently_in_one_claim(harness, poel_conn):
    naps.clear()
    ids = harness.queue.enqueue_many([JobRequest("fake.nap", {"key": str(i)}) for i in range(5)])
    assert sorted(harness.worker.run_once()) == sorted(ids)
    assert {get_row(poel_conn, i)["state"] for i in ids} == {"succeeded"}
    # one claim, one greenlet each: every job started before any of them ended
    assert [event for event, _ in naps] == ["start"] * 5 + ["end"] * 5


class WatchedHeld(dict):
    """The worker's table of held jobs, keeping a weak reference to each entry and context."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __setitem__(self, job_id, entry) -> None:
        self.refs += [weakref.ref(entry), weakref.ref(entry.ctx)]
        super().__setitem__(job_id, entry)


def test_a_finished_job_is_freed_without_the_cycle_collector(harness, poel_conn):
    """Nothing on a job's path refers back to itself: a cycle per job would leave every
    finished job to the cyclic garbage collector, whose runs cost a no-op job a fifth of
    its CPU under load (and a full one stalls the hub for tens of milliseconds)."""
    harness.worker.held = held = WatchedHeld()  # before run_once opens the services
    ids = harness.queue.enqueue_many(
        [JobRequest("test.record", {"key": "a"}), JobRequest("test.fail", {"key": "b"})]
    )
    gc.collect()
    gc.disable()
    try:
        assert sorted(harness.worker.run_once()) == sorted(ids)
        assert not held  # both outcomes written
        assert len(held.refs) == 4
        alive = [ref() for ref in held.refs if ref() is not None]
    finally:
        gc.enable()
    assert alive == []


def test_validator_bug_fails_the_job_at_once(harness, poel_conn):
    # stored unvalidated (from SQL), then the model's validator raises AttributeError
    job_id = poel_conn.execute(
        "SELECT poel.enqueue('fake.fussy', '{\"name\": 5}') AS id"
    ).fetchone()["id"]
    assert harness.worker.run_once() == [job_id]
    row = get_row(poel_conn, job_id)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert row["last_error"].startswith("invalid payload for 'fake.fussy'")
    assert "AttributeError" in row["last_error"]
    assert harness.finished(job_id)[2] == "failed"
    # and a producer gets InvalidPayload, not the validator's AttributeError
    with pytest.raises(InvalidPayload, match="AttributeError"):
        harness.queue.enqueue("fake.fussy", {"name": 5})
    assert harness.run("fake.fussy", {"name": "OK"}) > job_id


def test_a_bug_on_the_job_path_does_not_strand_the_job(harness, poel_conn):
    job_id = harness.run("fake.bad_backoff")
    row = get_row(poel_conn, job_id)
    assert row["state"] == "failed"  # not left running with its lease renewed forever
    assert row["lease_owner"] is None
    assert (
        row["last_error"]
        == "worker error: ZeroDivisionError: a plugin's backoff function has a bug"
    )
    assert harness.worker.held == {}
    assert get_row(poel_conn, harness.run("test.record", {"key": "next"}))["state"] == "succeeded"


def test_a_leaked_timer_fails_neither_the_next_job_nor_its_own(run_job, poel_conn):
    """A handler that starts a gevent.Timeout and returns: the next job on the same runner
    greenlet, running when the timer fires, succeeds; a warning names the leaking type."""
    leaker = run_job("test.leak_timer", {"key": "leak", "seconds": 0.2})
    assert leaker.state == "succeeded"
    innocent = run_job.queue.enqueue("test.sleep", {"key": "innocent", "seconds": 0.5})
    with structlog.testing.capture_logs() as logs:  # the timer's warning is no job's log
        assert run_job.worker.run_once() == [innocent]
    row = get_row(poel_conn, innocent)
    assert (row["state"], row["last_error"]) == ("succeeded", None)
    [warning] = [e for e in logs if e["event"] == "a finished job's gevent.Timeout fired; ignored"]
    assert warning["leaked_by"] == "test.leak_timer"
    assert get_row(poel_conn, leaker.id)["state"] == "succeeded"


@pytest.mark.parametrize("job_type", ["test.missing_key", "test.thread_missing_key"])
def test_a_failure_keeps_its_traceback_on_every_executor(run_job, job_type):
    result = run_job(job_type, {"key": "x"})
    assert (result.state, result.error) == ("failed", "KeyError: 'x'")
    [error] = result.row["errors"]
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "in missing_key" in error["traceback"]
    assert error["traceback"].rstrip().endswith("KeyError: 'x'")
