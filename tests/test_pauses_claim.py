"""Pauses as the claim sees them: enforced by the claim statement itself, at no cost when
nothing is paused, and without blocking claims or being blocked by them. Measured by
what the server reads (EXPLAIN ANALYZE's rows), as in test_claim_shapes."""

from __future__ import annotations

import time
from typing import Any

from poel_host.database import connection
from poel_host.store import Store, claim_query

from .test_claim_shapes import LIMIT, params, rows_read

BACKLOG = 10_000


def _claim(conn: Any, job_types: list[str], queues: list[str] | None = None) -> list[Any]:
    return conn.execute(
        claim_query("poel", len(job_types)), {**params(job_types), "queues": queues}
    ).fetchall()


def _backlog(conn: Any, job_type: str, queue: str, n: int, priority: int = 0) -> None:
    conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, priority)"
        " SELECT %s, %s, %s FROM generate_series(1, %s)",
        [job_type, queue, priority, n],
    )


def test_a_pause_costs_a_claim_nothing_while_nothing_is_paused(poel_conn):
    _backlog(poel_conn, "test.noop", "default", BACKLOG)
    _backlog(poel_conn, "test.record", "default", BACKLOG)
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    assert rows_read(poel_conn, ["test.noop"]) <= 3 * LIMIT
    assert rows_read(poel_conn, ["test.noop", "test.record"]) <= 4 * LIMIT
    # Nor does a paused queue none of whose jobs comes first (here: it has none).
    poel_conn.execute("SELECT poel.pause('queue', 'elsewhere')")
    poel_conn.execute("SELECT poel.pause('type', 'not.these')")
    assert rows_read(poel_conn, ["test.noop", "test.record"]) <= 4 * LIMIT


def test_a_paused_type_is_not_read_at_all(poel_conn):
    # The paused type's backlog comes first in claim order: it must not be read through.
    _backlog(poel_conn, "test.noop", "default", BACKLOG, priority=10)
    _backlog(poel_conn, "test.record", "default", 100)
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    poel_conn.execute("SELECT poel.pause('type', 'test.noop')")
    assert rows_read(poel_conn, ["test.noop", "test.record"]) <= 3 * LIMIT
    taken = _claim(poel_conn, ["test.noop", "test.record"])
    assert {row["job_type"] for row in taken} == {"test.record"}
    assert len(taken) == LIMIT


def test_a_paused_queue_is_skipped_and_its_type_claimed_in_other_queues(poel_conn):
    _backlog(poel_conn, "test.noop", "bulk", 50_000, priority=10)  # ahead in claim order
    _backlog(poel_conn, "test.noop", "default", 20)
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    poel_conn.execute("SELECT poel.pause('queue', 'bulk')")
    started = time.perf_counter()
    taken = _claim(poel_conn, ["test.noop"])
    took = time.perf_counter() - started
    assert {row["queue"] for row in taken} == {"default"} and len(taken) == LIMIT
    # The documented cost: the paused queue's rows ahead are passed over, one primary-key
    # probe each, about a tenth of a second for 50,000 (two: a ceiling for a busy machine).
    assert took < 2.0, f"a claim took {took:.3f}s past 50,000 paused rows"
    assert _claim(poel_conn, ["test.noop"], queues=["bulk"]) == []
    poel_conn.execute("SELECT poel.resume('queue', 'bulk')")
    taken = _claim(poel_conn, ["test.noop"])
    assert {row["queue"] for row in taken} == {"bulk"}  # its priority comes first again


def test_a_pause_committed_during_a_claim_holds_for_the_next_claim(poel_conn, poel_dsn):
    _backlog(poel_conn, "test.noop", "default", 100)
    with connection(poel_dsn) as claimer, connection(poel_dsn) as operator:
        claimer.autocommit = False
        # A claim in flight: its rows locked, its transaction open.
        first = _claim(claimer, ["test.noop"])
        assert len(first) == LIMIT
        operator.execute("SET statement_timeout = '5s'")  # a pause never waits on a claim
        assert operator.execute("SELECT poel.pause('type', 'test.noop')").fetchone()["pause"]
        claimer.commit()
        assert _claim(claimer, ["test.noop"]) == []  # the next claim sees the pause
        claimer.commit()
        # An uncommitted pause holds nothing up and changes nothing yet.
        operator.autocommit = False
        operator.execute("SELECT poel.resume('type', 'test.noop')")
        operator.execute("SELECT poel.pause('type', 'test.noop')")
        claimer.execute("SET statement_timeout = '5s'")
        assert _claim(claimer, ["test.noop"]) == []  # still paused as committed
        claimer.commit()
        operator.commit()
    running = poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE state = 'running'"
    ).fetchone()["n"]
    assert running == LIMIT  # the claim made before the pause keeps its jobs


def test_enqueue_and_the_promoter_go_on_for_a_paused_type(poel_conn, poel_queue):
    poel_queue.pause(job_type="test.noop")
    now_id = poel_queue.enqueue("test.noop", {"key": "now"})
    later_id = poel_queue.enqueue("test.noop", {"key": "later"}, delay=0.05)
    poel_conn.execute("UPDATE poel.jobs SET run_at = now() WHERE id = %s", [later_id])
    Store("poel").promote_due(limit=10, connection=poel_conn)
    rows = poel_conn.execute("SELECT id, state::text, ready FROM poel.jobs ORDER BY id").fetchall()
    assert [(r["id"], r["state"], r["ready"]) for r in rows] == [
        (now_id, "queued", True),
        (later_id, "queued", True),
    ]
    assert _claim(poel_conn, ["test.noop"]) == []


def _skips(conn: Any) -> set[tuple[str, str, str]]:
    rows = conn.execute("SELECT kind, name, why FROM poel.claim_skips").fetchall()
    return {(r["kind"], r["name"], r["why"]) for r in rows}


def test_the_claims_one_table_of_skips_follows_every_write_of_pauses_and_steering(poel_conn):
    # The plain claim reads claim_skips alone (one subquery to plan, not four); the
    # pauses' and the steering's triggers keep it, whatever writes them.
    poel_conn.execute("SELECT poel.pause('type', 'test.noop')")
    poel_conn.execute("SELECT poel.pause('queue', 'bulk')")
    poel_conn.execute(
        "INSERT INTO poel.steering (kind, name, concurrency) VALUES ('type', 'test.noop', 2)"
    )
    poel_conn.execute(
        "INSERT INTO poel.steering (kind, name, rate, per_ms) VALUES ('queue', 'api', 3, 1000)"
    )
    assert _skips(poel_conn) == {
        ("type", "test.noop", "paused"),
        ("queue", "bulk", "paused"),
        ("type", "test.noop", "steered"),
        ("queue", "api", "steered"),
    }
    poel_conn.execute("UPDATE poel.steering SET name = 'web' WHERE name = 'api'")
    poel_conn.execute("SELECT poel.resume('type', 'test.noop')")
    assert _skips(poel_conn) == {
        ("queue", "bulk", "paused"),
        ("type", "test.noop", "steered"),
        ("queue", "web", "steered"),
    }
    # Paused and steered: both a paused type's jobs and a steered one's stay unclaimed.
    _backlog(poel_conn, "test.noop", "default", 3)
    assert _claim(poel_conn, ["test.noop"]) == []
    poel_conn.execute("TRUNCATE poel.steering")
    assert _skips(poel_conn) == {("queue", "bulk", "paused")}
    assert len(_claim(poel_conn, ["test.noop"])) == 3
    poel_conn.execute("DELETE FROM poel.pauses")
    assert _skips(poel_conn) == set()
