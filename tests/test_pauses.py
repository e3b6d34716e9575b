"""Pausing and resuming through the Queue client and SQL: idempotence, what each call
says, names refused with a clear error (hostile ones first), and a connection lost in
the middle of a resume."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from poel_host.database import connection
from poel_host.errors import DatabaseUnavailable, InvalidName
from poel_host.queue import Queue

from .conftest import wait_until
from .test_pauses_claim import _claim

HOSTILE_TYPES = [
    "a\x00b",  # PostgreSQL cannot store it: a driver error unless refused first
    "x" * 10_000,
    "x'; DROP TABLE poel.jobs; --",
    "",
    ".starts_with_a_dot",
    "\ud800",  # a lone surrogate
]


@pytest.mark.parametrize("name", HOSTILE_TYPES, ids=lambda n: repr(n)[:20])
def test_a_hostile_job_type_gets_a_clear_error(poel_queue: Queue, poel_conn: Any, name: str):
    with pytest.raises(InvalidName, match="job type") as caught:
        poel_queue.pause(job_type=name)
    assert len(str(caught.value)) < 200  # the 10 kB name is not echoed whole
    with pytest.raises(InvalidName):
        poel_queue.resume(job_type=name)
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.pauses").fetchone()["n"] == 0
    assert poel_conn.execute("SELECT to_regclass('poel.jobs') AS t").fetchone()["t"]


@pytest.mark.parametrize("name", ["a\x00b", "x" * 10_000, "", "\ud800"], ids=repr)
def test_a_hostile_queue_name_gets_a_clear_error(poel_queue: Queue, name: str):
    with pytest.raises(InvalidName, match="queue"):
        poel_queue.pause(queue=name)


def test_a_queue_name_with_sql_in_it_is_just_a_name(poel_queue: Queue, poel_conn: Any):
    name = "q'; DROP TABLE poel.jobs; --"  # a queue may be named anything enqueue accepts
    poel_queue.enqueue("test.noop", {}, queue=name)
    poel_queue.enqueue("test.noop", {}, queue="default")
    assert poel_queue.pause(queue=name) is True
    assert [p.name for p in poel_queue.pauses()] == [name]
    assert [r["queue"] for r in _claim(poel_conn, ["test.noop"])] == ["default"]


def test_the_database_refuses_bad_names_from_sql_too(poel_conn: Any):
    import psycopg

    for kind, name in [("type", "no spaces"), ("queue", "x" * 201), ("job", "x"), ("type", "")]:
        with pytest.raises(psycopg.errors.CheckViolation):
            poel_conn.execute("SELECT poel.pause(%s, %s)", [kind, name])


def test_say_one_of_queue_or_job_type(poel_queue: Queue):
    with pytest.raises(InvalidName, match="one of"):
        poel_queue.pause()
    with pytest.raises(InvalidName, match="one of"):
        poel_queue.pause(queue="a", job_type="b")
    with pytest.raises(InvalidName, match="reason"):
        poel_queue.pause(queue="a", reason="r" * 1001)


def test_pausing_twice_is_idempotent_and_resuming_says_what_it_did(poel_queue: Queue):
    assert poel_queue.pauses() == []
    assert poel_queue.pause(job_type="not.deployed.yet", reason="migration", by="ops") is True
    assert poel_queue.pause(job_type="not.deployed.yet", reason="again") is False
    [pause] = poel_queue.pauses()
    assert (pause.kind, pause.name, pause.reason, pause.paused_by) == (
        "type",
        "not.deployed.yet",
        "migration",  # the first pause's, kept
        "ops",
    )
    assert poel_queue.pause(queue="not.deployed.yet") is True  # a queue: another pause
    assert len(poel_queue.pauses()) == 2
    assert poel_queue.resume(job_type="not.deployed.yet") is True
    assert poel_queue.resume(job_type="not.deployed.yet") is False
    assert [p.kind for p in poel_queue.pauses()] == ["queue"]


def test_a_connection_lost_during_a_resume_leaves_the_pause(
    poel_settings: Any, poel_dsn: str, poel_conn: Any
):
    poel_conn.execute("INSERT INTO poel.jobs (job_type) VALUES ('test.noop')")
    with Queue(poel_dsn, jobs={}) as queue, connection(poel_dsn) as blocker:
        assert queue.pause(job_type="test.noop") is True
        blocker.autocommit = False
        blocker.execute("SELECT * FROM poel.pauses FOR UPDATE")  # the resume waits here
        outcome: list[Any] = []

        def resume() -> None:
            try:
                outcome.append(queue.resume(job_type="test.noop"))
            except DatabaseUnavailable as exc:  # what the test expects
                outcome.append(exc)

        thread = threading.Thread(target=resume)
        thread.start()
        pid = wait_until(
            lambda: poel_conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%resume%%'"
            ).fetchone(),
            what="the resume to wait on the lock",
        )["pid"]
        poel_conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join(timeout=10)
        blocker.rollback()
        [error] = outcome
        assert isinstance(error, DatabaseUnavailable)
        # Nothing was resumed: still paused, still not claimed.
        assert [p.name for p in queue.pauses()] == ["test.noop"]
        assert _claim(poel_conn, ["test.noop"]) == []
        # The next resume (on a new connection) does it, once.
        assert queue.resume(job_type="test.noop") is True
        assert queue.resume(job_type="test.noop") is False
    assert len(_claim(poel_conn, ["test.noop"])) == 1


def test_the_test_kit_does_not_run_a_paused_type(run_job: Any, poel_queue: Queue):
    poel_queue.pause(job_type="test.record")
    with pytest.raises(AssertionError, match="was not claimed"):
        run_job("test.record", {"key": "k"})
    poel_queue.resume(job_type="test.record")
    assert run_job("test.record", {"key": "k"}).state == "succeeded"
