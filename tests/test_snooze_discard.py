"""Snooze and discard from a handler, on every executor, through the test kit's real
claim, run and complete path (the job types are poel-testprocs' ``steer.*``).

A snooze puts the job back, its attempt not counted and its snoozes counted, bounded by
``Job(max_snoozes=...)``; a discard fails it at once. What a hostile handler can make of
them (NaN seconds, a subclass without seconds, a class serve cannot import, a 100 kB
reason with a NUL byte, a snooze from an attempt lost meanwhile) is tested here first."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from poel_host import Discard, Job, JobContext, Snooze
from poel_host.snooze_discard import MAX_SNOOZE_S, snooze_seconds
from poel_host.storable import ERROR_MAX_CHARS

EXECUTORS = ["greenlet", "thread", "process"]


def hook_notes(conn: Any, job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT note FROM poel_proc_runs WHERE job_id = %s AND key = 'hook' ORDER BY id",
        [job_id],
    )
    return [r["note"].strip() for r in rows]


def run_again(run_job: Any, job_id: int) -> Any:
    """The job's next run, now (run_job.retry makes a queued job due)."""
    return run_job.retry(job_id)


# The exceptions themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds", [math.nan, math.inf, -math.inf, -1, -0.001, 1e300, 10**400, MAX_SNOOZE_S + 1]
)
def test_snooze_refuses_seconds_that_are_not_a_finite_time_up_to_a_year(seconds: Any) -> None:
    with pytest.raises(ValueError, match="snooze seconds must be a finite number from 0"):
        Snooze(seconds)


@pytest.mark.parametrize("seconds", ["5", None, True, [1]])
def test_snooze_refuses_what_is_not_a_number(seconds: Any) -> None:
    with pytest.raises(ValueError, match="snooze seconds must be a number"):
        snooze_seconds(seconds)


def test_snooze_keeps_a_checked_float_and_ctx_snooze_raises_it() -> None:
    assert Snooze(0).seconds == 0.0 and Snooze(MAX_SNOOZE_S).seconds == MAX_SNOOZE_S
    ctx = JobContext(1, "t", 1, 3, "default", dt.datetime.now(dt.timezone.utc), log=None)
    with pytest.raises(Snooze) as raised:
        ctx.snooze(2.5)
    assert raised.value.seconds == 2.5 and str(raised.value) == "snoozed for 2.5s"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_a_job_refuses_a_bad_max_snoozes(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_snoozes must be an integer >= 0 or None"):
        Job("t", type(Job), lambda p, c: None, max_snoozes=bad)  # type: ignore[arg-type]


def test_snooze_and_discard_are_public_names() -> None:
    import poel_host

    assert poel_host.Snooze is Snooze and poel_host.Discard is Discard
    assert {"Snooze", "Discard"} <= set(poel_host.__all__)


# Snoozing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("how", ["ctx", "raise", "subclass", "local"])
def test_a_snooze_requeues_the_job_without_counting_the_attempt(
    run_job: Any, poel_conn: Any, executor: str, how: str
) -> None:
    # "local": a Snooze subclass defined in the handler, which no other process can
    # import: from a process job's child only its seconds cross to serve.
    first = run_job(f"steer.snooze.{executor}", {"seconds": "60", "how": how})
    row = first.row
    assert first.outcome == "snoozed", row["last_error"]
    assert (row["state"], row["attempts"], row["snoozes"], row["last_error"]) == (
        "queued",
        0,
        1,
        None,
    )
    assert row["errors"] == [] and row["started_at"] is None
    waits = (row["run_at"] - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 50 < waits <= 60
    ready = poel_conn.execute("SELECT ready FROM poel.jobs WHERE id = %s", [first.id]).fetchone()
    assert ready["ready"] is False  # in the future: no claim reads it before the promoter
    assert run_job.worker.run_once() == []  # not due
    second = run_again(run_job, first.id)  # due now: ctx.snoozes is 1, so it returns
    assert (second.state, second.row["attempts"], second.row["snoozes"]) == ("succeeded", 1, 1)
    assert hook_notes(poel_conn, first.id) == ["finished snoozed", "finished succeeded"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_job_that_snoozes_for_ever_fails_past_max_snoozes(
    run_job: Any, poel_conn: Any, executor: str
) -> None:
    # Zero seconds: due again at once, as a buggy handler's tight loop would be.
    result = run_job(f"steer.snooze3.{executor}", {"seconds": "0", "times": 1000})
    assert result.outcome == "snoozed"
    for _ in range(2):
        assert run_job.worker.run_once() == [result.id]
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [result.id]).fetchone()
    assert (row["state"], row["snoozes"], row["attempts"]) == ("queued", 3, 0)
    # A fourth snooze fails the job instead: its one counted attempt.
    last = run_again(run_job, result.id)
    assert last.outcome == "failed"
    assert (last.row["state"], last.row["attempts"], last.row["snoozes"]) == ("failed", 1, 3)
    assert last.error == "snoozed 3 times already: max_snoozes is 3"
    assert hook_notes(poel_conn, result.id)[-1].startswith("finished failed snoozed 3 times")


def test_max_snoozes_none_lets_a_job_snooze_as_long_as_it_takes(
    run_job: Any, poel_conn: Any
) -> None:
    result = run_job("steer.snooze_unbounded", {"seconds": "0", "times": 150})
    for _ in range(150):
        run_job.worker.run_once()
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [result.id]).fetchone()
    assert (row["state"], row["snoozes"], row["attempts"]) == ("succeeded", 150, 1)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("seconds", ["nan", "-1", "inf", "1e300", "10**400"])
def test_a_snooze_with_bad_seconds_fails_the_attempt_saying_why(
    run_job: Any, executor: str, seconds: str
) -> None:
    result = run_job(f"steer.snooze.{executor}", {"seconds": seconds}, max_attempts=1)
    assert result.outcome == "failed"
    assert result.row["snoozes"] == 0 and result.row["attempts"] == 1
    assert "snooze seconds must be a finite number from 0 to 31536000" in result.error


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_snooze_subclass_without_seconds_fails_the_attempt_naming_it(
    run_job: Any, executor: str
) -> None:
    result = run_job(f"steer.snooze.{executor}", {"how": "no_seconds"}, max_attempts=1)
    assert result.outcome == "failed"
    assert result.error.startswith("NoSeconds: snooze seconds must be a number, got None")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_snooze_for_a_year_is_kept_not_ready(run_job: Any, executor: str) -> None:
    result = run_job(f"steer.snooze.{executor}", {"seconds": str(int(MAX_SNOOZE_S))})
    assert result.outcome == "snoozed"
    waits = (result.row["run_at"] - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert MAX_SNOOZE_S - 60 < waits <= MAX_SNOOZE_S


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_snooze_from_a_lost_attempt_leaves_the_next_attempt_alone(
    run_job: Any, poel_conn: Any, executor: str
) -> None:
    result = run_job(f"steer.snooze.{executor}", {"seconds": "0", "how": "lose_first"})
    row = result.row
    # The handler's attempt was taken over (a new token, attempt 2) before it snoozed: the
    # snooze was not written, and the attempt now running is untouched.
    assert (row["state"], row["attempts"], row["snoozes"]) == ("running", 2, 0)
    assert any(e["event"].startswith("job outcome not recorded") for e in result.logs)
    token = poel_conn.execute(
        "SELECT lease_token FROM poel.jobs WHERE id = %s", [result.id]
    ).fetchone()["lease_token"]
    assert token is not None


def test_a_stale_snooze_is_not_written_by_the_store(run_job: Any, poel_conn: Any) -> None:
    run_job.worker.open()
    store = run_job.worker.store
    job_id = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, attempts, lease_token)"
        " VALUES ('steer.snooze.greenlet', '{}', 'running', 1, gen_random_uuid()) RETURNING id"
    ).fetchone()["id"]
    stale = "00000000-0000-0000-0000-000000000001"
    assert store.finish([(job_id, stale, "snoozed", None, 0, None)]) == set()
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert (row["state"], row["attempts"], row["snoozes"]) == ("running", 1, 0)


# Discarding -------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("subclass", [False, True])
def test_a_discard_fails_the_job_at_once_with_its_reason(
    run_job: Any, poel_conn: Any, executor: str, subclass: bool
) -> None:
    result = run_job(f"steer.discard.{executor}", {"reason": "gone", "subclass": subclass})
    assert result.outcome == "discarded"
    row = result.row
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("failed", 1, 3)
    expected = "discarded: PluginDiscard: gone" if subclass else "discarded: gone"
    assert row["last_error"] == expected
    assert [e["error"] for e in row["errors"]] == [expected]
    assert hook_notes(poel_conn, result.id) == [f"finished discarded {expected}"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_hostile_discard_reason_is_stored_and_spares_the_jobs_beside_it(
    run_job: Any, poel_conn: Any, poel_queue: Any, executor: str
) -> None:
    # A NUL byte (PostgreSQL's text refuses it) in a 100 kB reason, in the same batch of
    # outcomes as other jobs' (one statement writes them).
    hostile = poel_queue.enqueue(
        f"steer.discard.{executor}", {"reason": "b" + "x" * 999, "repeat": 100, "nul": True}
    )
    snoozed = poel_queue.enqueue(f"steer.snooze.{executor}", {"seconds": "30"})
    plain = poel_queue.enqueue(f"steer.discard.{executor}", {"reason": "plain"})
    ran = run_job.worker.run_once()  # one batch of outcomes (a child each, processes)
    ran += run_job.worker.run_once()  # the rest, when there are fewer children than jobs
    assert sorted(ran) == sorted([hostile, snoozed, plain])
    rows = {
        r["id"]: r
        for r in poel_conn.execute(
            "SELECT id, state, last_error, snoozes FROM poel.jobs WHERE id = ANY(%s)",
            [[hostile, snoozed, plain]],
        )
    }
    bad = rows[hostile]["last_error"]
    assert bad.startswith("discarded: b\\x00xxx") and len(bad) <= ERROR_MAX_CHARS
    assert "characters cut" in bad
    assert rows[hostile]["state"] == rows[plain]["state"] == "failed"
    assert rows[plain]["last_error"] == "discarded: plain"
    assert (rows[snoozed]["state"], rows[snoozed]["snoozes"]) == ("queued", 1)


def test_a_jobs_snoozes_are_kept_once_it_moves_to_the_history(
    run_job: Any, poel_conn: Any, poel_queue: Any
) -> None:
    from poel_host.store import Store

    first = run_job("steer.snooze.greenlet", {"seconds": "0"})
    assert run_again(run_job, first.id).state == "succeeded"
    moved = Store("poel").archive_finished(
        after_s=0, succeeded_hours=24, batch=10, connection=poel_conn
    )
    assert moved == 1
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0
    job = poel_queue.get(first.id)
    assert (job["state"], job["attempts"], job["snoozes"]) == ("succeeded", 1, 1)
