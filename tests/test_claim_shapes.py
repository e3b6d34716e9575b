"""Issue 16: a claim's cost does not depend on the shape of the backlog around the jobs it
takes. 100,000 future jobs of distinct priorities made each claim walk every priority
(300 ms instead of 1 ms: ``benchmarks/claim_shapes.py``), and the due jobs of a type the
worker does not handle, ahead in priority, were read through on every claim. Measured
here by what the server reads (EXPLAIN ANALYZE's rows), not by time, so the test cannot
be flaky: a claim of 10 reads about 10 rows of the index per type it handles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg import sql

from poel_host.database import connection
from poel_host.store import Store, claim_query

ROWS = 20_000
LIMIT = 10
SHAPES = {
    "nothing": None,
    "future jobs of distinct priorities": (
        "INSERT INTO poel.jobs (job_type, priority, run_at)"
        " SELECT 'test.noop', g, now() + interval '1 day' FROM generate_series(1, %s) g"
    ),
    "due jobs of another type, ahead": (
        "INSERT INTO poel.jobs (job_type, priority)"
        " SELECT 'other.kind', 10 FROM generate_series(1, %s)"
    ),
    "finished jobs": (
        "INSERT INTO poel.jobs (job_type, state, attempts, finished_at)"
        " SELECT 'test.noop', 'succeeded', 1, now() FROM generate_series(1, %s)"
    ),
}


def params(job_types: list[str]) -> dict[str, Any]:
    return {
        "job_types": job_types,
        "queues": None,
        "limit": LIMIT,
        "owner": "shapes",
        "lease_ms": 30_000,
        "token": str(uuid.uuid4()),
    }


def rows_read(conn, job_types: list[str]) -> int:
    """Rows the claim's scans of the jobs table returned or filtered out, in a transaction
    rolled back."""
    explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + claim_query("poel", len(job_types))
    with conn.transaction(force_rollback=True):
        plan = conn.execute(explain, params(job_types)).fetchone()["QUERY PLAN"][0]["Plan"]

    def walk(node: dict[str, Any]) -> int:
        # What a scan returned and what it read and threw away (its filter's rows).
        found = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        own = found * node["Actual Loops"] if "Scan" in node["Node Type"] else 0
        if node.get("Relation Name") != "jobs":
            own = 0
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_claim_reads_what_it_takes_whatever_the_backlog(poel_conn, shape):
    # A backlog of due jobs of the claimed type (on a table of a few rows the planner
    # rightly reads them all: that costs nothing).
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type) SELECT 'test.noop' FROM generate_series(1, 10000)"
    )
    if SHAPES[shape]:
        poel_conn.execute(SHAPES[shape], [ROWS])
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    # Index entries of the merged scans, and the rows locked: about LIMIT of each.
    assert rows_read(poel_conn, ["test.noop"]) <= 3 * LIMIT
    assert rows_read(poel_conn, ["test.noop", "test.record", "other.kind"]) <= 6 * LIMIT


def test_future_jobs_are_claimed_once_promoted_and_only_then(poel_conn):
    store = Store("poel")
    soon = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, run_at) VALUES ('test.noop', now() + interval '1 day')"
        " RETURNING id, ready"
    ).fetchone()
    assert soon["ready"] is False  # the trigger: a future job is not ready
    claimed = poel_conn.execute(claim_query("poel", 1), params(["test.noop"])).fetchall()
    assert claimed == []
    poel_conn.execute("UPDATE poel.jobs SET run_at = now() - interval '1 second'")
    assert store.promote_due(limit=10, connection=poel_conn) == 0  # the trigger did it
    row = poel_conn.execute("SELECT ready FROM poel.jobs WHERE id = %s", [soon["id"]]).fetchone()
    assert row["ready"] is True
    [taken] = poel_conn.execute(claim_query("poel", 1), params(["test.noop"])).fetchall()
    assert taken["id"] == soon["id"]


def test_the_promoter_makes_jobs_ready_once_due(poel_conn):
    ids = [
        r["id"]
        for r in poel_conn.execute(
            "INSERT INTO poel.jobs (job_type, run_at) SELECT 'test.noop',"
            " now() + interval '1 second' FROM generate_series(1, 5) RETURNING id"
        ).fetchall()
    ]
    store = Store("poel")
    assert store.promote_due(limit=10, connection=poel_conn) == 0  # not due yet
    poel_conn.execute("SELECT pg_sleep(1.1)")
    assert store.promote_due(limit=3, connection=poel_conn) == 3  # a batch at a time
    assert store.promote_due(limit=10, connection=poel_conn) == 2
    ready = poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE ready AND id = ANY(%s)", [ids]
    ).fetchone()
    assert ready["n"] == 5


@pytest.mark.parametrize("backlog", ["both types", "one type locked by another claim"])
def test_a_claim_locks_only_the_rows_it_claims(poel_dsn, poel_conn, backlog):
    # A lane of several job types: each type's scan may find `limit` rows, but a claim
    # takes `limit` in all. A row locked and not claimed is hidden from every other
    # worker's claim (SKIP LOCKED) for the statement's time, for nothing.
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, priority) SELECT t, p FROM unnest("
        "array['test.noop', 'test.record']) AS t, generate_series(1, 10) AS p"
    )
    with connection(poel_dsn) as other, connection(poel_dsn) as claimer:
        if backlog == "one type locked by another claim":
            other.execute("BEGIN")
            held = other.execute(
                "SELECT id FROM poel.jobs WHERE job_type = 'test.noop'"
                " ORDER BY priority DESC LIMIT 4 FOR UPDATE"
            ).fetchall()
        else:
            held = []
        claimer.execute("BEGIN")
        claimed = claimer.execute(
            claim_query("poel", 2), params(["test.noop", "test.record"]) | {"limit": 5}
        ).fetchall()
        # Rows the claim holds: every row a third session cannot lock, but those of `other`.
        free = poel_conn.execute(
            "SELECT id FROM poel.jobs WHERE state = 'queued' FOR UPDATE SKIP LOCKED"
        ).fetchall()
        queued = poel_conn.execute("SELECT id FROM poel.jobs").fetchall()
        locked = {r["id"] for r in queued} - {r["id"] for r in free} - {r["id"] for r in held}
        assert len(claimed) == 5
        assert locked == {r["id"] for r in claimed}
        # The highest priorities of both types were taken (those `other` holds aside).
        taken = claimer.execute(
            "SELECT job_type, priority FROM poel.jobs WHERE id = ANY(%s)",
            [[r["id"] for r in claimed]],
        ).fetchall()
        if backlog == "both types":
            assert sorted(r["priority"] for r in taken) == [8, 9, 9, 10, 10]
        else:  # the next rows in merged order: test.record's 10 to 7, then a 6
            assert sorted(r["priority"] for r in taken) == [6, 7, 8, 9, 10]
            assert {("test.record", p) for p in (7, 8, 9, 10)} <= {
                (r["job_type"], r["priority"]) for r in taken
            }
        claimer.execute("ROLLBACK")
        if held:
            other.execute("ROLLBACK")


def test_a_claim_reads_what_it_takes_when_the_statistics_say_the_table_is_empty(poel_conn):
    """With finished jobs moved out, an autovacuum can leave the jobs table's estimate at
    no rows while a backlog waits (it counted the rows it found dead). A claim planned on
    that estimate used to lock each row through a scan of the whole backlog in another
    index (found by the storage designs benchmark): it must still read what it takes."""
    # Pages of finished jobs, moved out (their pages kept: live rows follow them), then a
    # backlog of 6,000.
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, state, attempts, finished_at)"
        " SELECT 'test.noop', 'succeeded', 1, now() FROM generate_series(1, %s)",
        [10 * ROWS],
    )
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type) SELECT 'test.noop' FROM generate_series(1, 10)"
    )
    poel_conn.execute("DELETE FROM poel.jobs WHERE state = 'succeeded'")
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type) SELECT 'test.noop' FROM generate_series(1, 6000)"
    )
    poel_conn.execute("UPDATE pg_class SET reltuples = 0 WHERE oid = 'poel.jobs'::regclass")
    assert rows_read(poel_conn, ["test.noop"]) <= 3 * LIMIT
    assert rows_read(poel_conn, ["test.noop", "test.record", "other.kind"]) <= 6 * LIMIT
