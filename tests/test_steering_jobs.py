"""Steering as a plugin declares it and a producer gives keys (issue 19): the Job options'
checks, a job's key from enqueue(key=), from its Job's payload field and in poel.enqueue,
and the rows a serve writes as it starts (an operator's row kept)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from poel_host import Job
from poel_host.job_steering import declared_rows, job_key
from poel_host.queue import JobRequest, Queue
from poel_host.store import Store


class Body(BaseModel):
    record: Any = None


def _job(**options: Any) -> Job:
    return Job(type="t.steered", schema=Body, handler=lambda p, c: None, **options)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"concurrency": True}, "concurrency must be an integer >= 1"),
        ({"weight": 0}, "weight must be an integer >= 1"),
        ({"concurrency": 2, "weight": 3}, "no job could ever start"),
        ({"rate": 0}, "rate must be an integer >= 1"),
        ({"rate": 3, "per": 0}, "per must be a positive number"),
        ({"rate": 3, "per": 0.0001}, "at least a millisecond"),
        ({"fair": True}, "name its field with key="),
        ({"per_key": True, "key": "record"}, "give one"),
        ({"key_weights": {"a": 2}, "key": "record"}, "set fair=True"),
        ({"fair": True, "key": "record", "key_weights": {"a": 0}}, "integer weights >= 1"),
        ({"key": ""}, "key must name a payload field"),
    ],
)
def test_bad_steering_options_are_refused_with_what_to_do(options, says):
    with pytest.raises(ValueError, match=says):
        _job(**options)


def test_a_job_key_is_read_as_postgresql_reads_payload_field():
    job = _job(concurrency=1, per_key=True, key="record")
    assert job_key(job, {"record": "r-1"}) == "r-1"
    assert job_key(job, {"record": 42}) == "42"
    assert job_key(job, {"record": True}) == "true"
    assert job_key(job, {}) is None
    assert job_key(_job(), {"record": "x"}) is None
    hash(_job(fair=True, key="record", key_weights={"a": 2}))  # a Job stays hashable


def test_keys_from_enqueue_from_the_job_and_from_sql(poel_conn, poel_queue: Queue):
    store = Store("poel")
    steered = _job(concurrency=2, per_key=True, key="record")
    store.declare_steering(declared_rows([steered]), poel_conn)
    poel_queue._jobs = {steered.type: steered}
    given = poel_queue.enqueue("t.steered", {"record": "a"}, key="explicit")
    derived = poel_queue.enqueue("t.steered", {"record": 7})
    [many] = poel_queue.enqueue_many([JobRequest("t.steered", {"record": "m"})])
    by_sql = poel_conn.execute(
        "SELECT poel.enqueue('t.steered', '{\"record\": \"s\"}') AS id"
    ).fetchone()["id"]
    keys = {
        r["id"]: r["key"] for r in poel_conn.execute("SELECT id, key FROM poel.jobs").fetchall()
    }
    assert [keys[i] for i in (given, derived, many, by_sql)] == ["explicit", "7", "m", "s"]
    with pytest.raises(Exception, match="key"):
        poel_queue.enqueue("t.steered", {"record": "a"}, key="x" * 201)


def test_a_serve_writes_its_jobs_steering_and_never_an_operators(poel_conn):
    store = Store("poel")
    limited = Job(type="t.a", schema=Body, handler=lambda p, c: None, concurrency=2)
    rated = Job(type="t.b", schema=Body, handler=lambda p, c: None, rate=3, per=0.5)
    plain = Job(type="t.c", schema=Body, handler=lambda p, c: None)
    poel_conn.execute(
        "INSERT INTO poel.steering (kind, name, concurrency) VALUES ('type', 't.b', 9)"
    )
    store.declare_steering(declared_rows([limited, rated, plain]), poel_conn)
    rows = {
        r["name"]: r
        for r in poel_conn.execute("SELECT * FROM poel.steering ORDER BY name").fetchall()
    }
    assert set(rows) == {"t.a", "t.b"}
    assert (rows["t.a"]["concurrency"], rows["t.a"]["source"]) == (2, "code")
    assert (rows["t.b"]["concurrency"], rows["t.b"]["rate"]) == (9, None)  # the operator's
    # The code changes: t.a is no longer steered, and loses its code row.
    unlimited = Job(type="t.a", schema=Body, handler=lambda p, c: None)
    store.declare_steering(declared_rows([unlimited, rated, plain]), poel_conn)
    names = [r["name"] for r in poel_conn.execute("SELECT name FROM poel.steering").fetchall()]
    assert names == ["t.b"]


def test_the_test_kit_claims_a_type_steered_by_hand_through_the_steered_claim(
    run_job, poel_queue: Queue, poel_conn
):
    # The kit writes no Job's steering (a serve does); a test that wants its type
    # steered writes the row as an operator would, and run_job then claims through
    # claim_steered (a steered job's slots are set).
    plain = run_job("test.noop", {})
    poel_queue.steer("type", "test.noop", concurrency=1)
    steered = run_job("test.noop", {})
    assert (plain.state, steered.state) == ("succeeded", "succeeded")
    slots = poel_conn.execute(
        "SELECT id, slots FROM poel.jobs WHERE id = ANY(%s) ORDER BY id", [[plain.id, steered.id]]
    ).fetchall()
    assert [r["slots"] for r in slots] == [None, 1]
