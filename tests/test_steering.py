"""Steering by hand through the Queue client and SQL (poel.steer, poel.unsteer; migration
0019): what a row says, that it is the operator's and outlives a serve's Job options,
values refused with a clear error, and what the listing counts as in use now."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from poel_host.errors import InvalidName, InvalidSteering
from poel_host.job_steering import declared_rows
from poel_host.jobs import Job
from poel_host.queue import Queue

from .test_explain import big_table, plan, scans_of_jobs  # noqa: F401 - a fixture


def _row(conn: Any, kind: str, name: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM poel.steering WHERE kind = %s AND name = %s", [kind, name]
    ).fetchone()


def _running(conn: Any, n: int, job_type: str, *, slots: int | None = 1, **more: Any) -> None:
    """Fake ``n`` running jobs: steered ones (slots set) unless ``slots`` is None."""
    conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, key, state, slots, ready)"
        " SELECT %s, %s, %s, 'running', %s, false FROM generate_series(1, %s)",
        [job_type, more.get("queue", "default"), more.get("key"), slots, n],
    )


def _starts(conn: Any, gate: str, n: int, ago_ms: int = 0) -> None:
    conn.execute(
        "INSERT INTO poel.steering_starts (gate, started_at)"
        " SELECT %s, now() - %s * interval '1 millisecond' FROM generate_series(1, %s)",
        [gate, ago_ms, n],
    )


def test_steer_writes_an_operators_row_and_replaces_it_whole(poel_queue: Queue, poel_conn: Any):
    assert poel_queue.steering() == []
    poel_queue.steer(
        "type",
        "test.noop",
        concurrency=4,
        rate=10,
        per=0.5,
        weight=2,
        fair=True,
        key_weights={"big": 3},
        key_field="tenant",
    )
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None
    assert {k: row[k] for k in ("concurrency", "weight", "rate", "per_ms", "per_key", "fair")} == {
        "concurrency": 4,
        "weight": 2,
        "rate": 10,
        "per_ms": 500,
        "per_key": False,
        "fair": True,
    }
    assert row["key_weights"] == {"big": 3} and row["key_field"] == "tenant"
    assert (row["source"], row["set_by"]) == ("operator", "postgres")

    poel_queue.steer("type", "test.noop", concurrency=1)  # what is left out is unset
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None
    assert (row["concurrency"], row["weight"], row["rate"], row["per_ms"]) == (1, 1, None, None)
    assert (row["fair"], row["key_weights"], row["key_field"]) == (False, {}, None)

    poel_queue.steer("queue", "bulk", rate=3, per=60)
    [queue, noop] = poel_queue.steering()
    assert (queue["kind"], queue["name"], queue["per"], queue["per_ms"]) == (
        "queue",
        "bulk",
        60.0,
        60_000,
    )
    assert noop["name"] == "test.noop" and noop["per"] is None
    assert poel_queue.unsteer("queue", "bulk") is True
    assert poel_queue.unsteer("queue", "bulk") is False
    assert [r["name"] for r in poel_queue.steering()] == ["test.noop"]


def test_an_operators_row_outlives_a_serves_job_options(poel_queue: Queue, poel_conn: Any):
    class Empty(BaseModel):
        pass

    job = Job(type="test.noop", schema=Empty, handler=lambda p, c: None, concurrency=9)
    store = poel_queue._store
    store.declare_steering(declared_rows([job]))  # a serve starts: the code's row
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None and (row["source"], row["concurrency"]) == ("code", 9)

    poel_queue.steer("type", "test.noop", concurrency=2)  # the operator's wins ...
    store.declare_steering(declared_rows([job]))  # ... over every serve that starts later
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None and (row["source"], row["concurrency"]) == ("operator", 2)
    store.declare_steering(declared_rows([]))  # a serve not loading the type leaves it too
    assert _row(poel_conn, "type", "test.noop") is not None

    assert poel_queue.unsteer("type", "test.noop") is True  # until removed by hand
    store.declare_steering(declared_rows([job]))
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None and (row["source"], row["concurrency"]) == ("code", 9)


def test_poel_steer_from_sql(poel_conn: Any):
    poel_conn.execute(
        "SELECT poel.steer('type', 'test.noop', concurrency => 3, rate => 5, per_ms => 1000,"
        " per_key => true, key_field => 'tenant')"
    )
    poel_conn.execute("SELECT poel.steer('queue', 'bulk', 2)")
    row = _row(poel_conn, "type", "test.noop")
    assert row is not None
    assert (row["concurrency"], row["rate"], row["per_ms"], row["per_key"]) == (3, 5, 1000, True)
    assert (row["source"], row["key_field"], row["key_weights"]) == ("operator", "tenant", {})
    # a code row becomes the operator's when steered by hand
    poel_conn.execute("UPDATE poel.steering SET source = 'code' WHERE kind = 'queue'")
    poel_conn.execute("SELECT poel.steer('queue', 'bulk', 5)")
    row = _row(poel_conn, "queue", "bulk")
    assert row is not None and (row["source"], row["concurrency"]) == ("operator", 5)
    assert poel_conn.execute("SELECT poel.unsteer('queue', 'bulk') AS u").fetchone()["u"] is True
    assert poel_conn.execute("SELECT poel.unsteer('queue', 'bulk') AS u").fetchone()["u"] is False
    for bad in (
        "SELECT poel.steer('queue', 'q', 1, weight => 2)",  # weight over the concurrency
        "SELECT poel.steer('queue', 'q', rate => 5)",  # a rate without its window
        "SELECT poel.steer('queue', 'q', 1, per_key => true)",  # per_key is a type's
        "SELECT poel.steer('job', 'q', 1)",
        "SELECT poel.steer('type', 't', 0)",
        "SELECT poel.steer('type', 't', key_weights => '[1]')",
    ):
        with pytest.raises(psycopg.errors.CheckViolation):
            poel_conn.execute(bad)


@pytest.mark.parametrize(
    ("kind", "options", "says"),
    [
        ("job", {"concurrency": 1}, "only a queue or a job type"),
        ("type", {}, "nothing to steer"),
        ("type", {"concurrency": 0}, "concurrency must be an integer from 1"),
        ("type", {"concurrency": True}, "concurrency must be an integer"),
        ("type", {"concurrency": 2**31}, "concurrency must be an integer"),
        ("type", {"rate": "5"}, "rate must be an integer"),
        ("type", {"rate": 5, "per": 0}, "per must be a positive number"),
        ("type", {"rate": 5, "per": 0.0001}, "per must be from 0.001"),
        ("type", {"rate": 5, "per": float("inf")}, "per must be a positive number"),
        ("type", {"rate": 5, "per": float("nan")}, "per must be a positive number"),
        ("type", {"rate": 5, "per": 10**7}, "per must be from 0.001"),
        ("type", {"concurrency": 2, "per": 5}, "give rate= too"),
        ("type", {"concurrency": 2, "weight": 3}, "weight 3 is more than the concurrency 2"),
        ("type", {"concurrency": 2, "weight": 0}, "weight must be an integer"),
        ("queue", {"concurrency": 2, "per_key": True}, "steer the job type, not queue"),
        ("queue", {"concurrency": 2, "fair": True}, "steer the job type, not queue"),
        ("queue", {"concurrency": 2, "weight": 2}, "set it on the job type"),
        ("queue", {"concurrency": 2, "key_field": "k"}, "key_field"),
        ("type", {"per_key": True}, "per_key holds a concurrency or a rate"),
        ("type", {"concurrency": 1, "key_weights": {"a": 2}}, "set fair too"),
        ("type", {"fair": True, "key_weights": {"a": 0}}, "the weight of key 'a'"),
        ("type", {"fair": True, "key_weights": {"": 1}}, "a key of key_weights is empty"),
        ("type", {"fair": True, "key_field": "a\x00b"}, "key_field contains a NUL"),
        ("type", {"fair": True, "key_field": "k" * 201}, "over the limit of 200"),
    ],
)
def test_values_that_cannot_be_set_get_a_clear_error(
    poel_queue: Queue, poel_conn: Any, kind: str, options: dict[str, Any], says: str
):
    with pytest.raises(InvalidSteering, match=None) as caught:
        poel_queue.steer(kind, "test.noop", **options)
    assert says in str(caught.value)
    assert len(str(caught.value)) < 300
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.steering").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("kind", "name"), [("type", "no spaces"), ("type", ""), ("queue", "q" * 10_000)]
)
def test_bad_names_are_refused_as_pauses_refuse_them(poel_queue: Queue, kind: str, name: str):
    with pytest.raises(InvalidName):
        poel_queue.steer(kind, name, concurrency=1)
    with pytest.raises(InvalidName):
        poel_queue.unsteer(kind, name)
    with pytest.raises(InvalidSteering, match="only a queue or a job type"):
        poel_queue.unsteer("jobs", "x")


def test_the_listing_counts_what_is_in_use_now(poel_queue: Queue, poel_conn: Any):
    poel_queue.steer("type", "test.noop", concurrency=6, weight=2, rate=5, per=1)
    poel_queue.steer("type", "test.keyed", concurrency=3, rate=4, per=10, per_key=True)
    poel_queue.steer("queue", "bulk", concurrency=10, rate=100, per=60)
    poel_queue.steer("type", "test.idle", fair=True)
    _running(poel_conn, 2, "test.noop", slots=2)
    _running(poel_conn, 1, "test.noop", slots=None)  # the plain claim's: no gate counts it
    _running(poel_conn, 1, "test.noop", slots=2, queue="bulk")
    _running(poel_conn, 2, "test.keyed", key="a", queue="bulk")
    _running(poel_conn, 1, "test.keyed", key="b")
    poel_conn.execute("INSERT INTO poel.jobs (job_type, slots) VALUES ('test.noop', 2)")  # queued
    _starts(poel_conn, "type:test.noop", 3)
    _starts(poel_conn, "type:test.noop", 4, ago_ms=5_000)  # before the 1 s window
    _starts(poel_conn, "key:test.keyed:a", 1)
    _starts(poel_conn, "key:test.keyed:b", 3)
    _starts(poel_conn, "key:test.keyedX:b", 9)  # another type's gate
    _starts(poel_conn, "queue:bulk", 7, ago_ms=30_000)

    rows = {(r["kind"], r["name"]): r for r in poel_queue.steering()}
    in_use = {
        key: (r["running"], r["running_keys"], r["busiest_key"], r["window_starts"])
        for key, r in rows.items()
    }
    assert in_use == {
        ("type", "test.noop"): (6, 1, 6, 3),
        ("type", "test.keyed"): (3, 2, 2, 3),
        ("queue", "bulk"): (4, 1, 4, 7),
        ("type", "test.idle"): (0, 0, 0, 0),
    }


@pytest.mark.usefixtures("big_table")  # 100,000 finished jobs, a few hundred live
def test_the_listing_reads_only_the_running_steered_jobs(poel_conn: Any):
    poel_conn.execute("SELECT poel.steer('type', 'kind.1', 2, per_key => true)")
    poel_conn.execute("SELECT poel.steer('queue', 'q1', 2, 5, 1000)")
    poel_conn.execute("ANALYZE poel.steering")
    scans = scans_of_jobs(plan(poel_conn, "list_steering"))
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans


def test_sql_refuses_a_type_name_no_job_could_have(poel_conn: Any):
    # poel.steer() from SQL is checked by the table, as Python checks the name first.
    with pytest.raises(psycopg.errors.CheckViolation, match="steering_type_name_valid"):
        poel_conn.execute("SELECT poel.steer('type', 'no spaces', concurrency => 1)")
    poel_conn.execute("SELECT poel.steer('queue', 'any name a queue may have', concurrency => 1)")
