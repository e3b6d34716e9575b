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

from poel_host.store import Store, queries

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
    """Rows the claim's scans of the jobs table returned, in a transaction rolled back."""
    explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + queries("poel")["claim_jobs"]
    with conn.transaction(force_rollback=True):
        plan = conn.execute(explain, params(job_types)).fetchone()["QUERY PLAN"][0]["Plan"]

    def walk(node: dict[str, Any]) -> int:
        own = node["Actual Rows"] * node["Actual Loops"] if "Scan" in node["Node Type"] else 0
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
    claimed = poel_conn.execute(queries("poel")["claim_jobs"], params(["test.noop"])).fetchall()
    assert claimed == []
    poel_conn.execute("UPDATE poel.jobs SET run_at = now() - interval '1 second'")
    assert store.promote_due(limit=10, connection=poel_conn) == 0  # the trigger did it
    row = poel_conn.execute("SELECT ready FROM poel.jobs WHERE id = %s", [soon["id"]]).fetchone()
    assert row["ready"] is True
    [taken] = poel_conn.execute(queries("poel")["claim_jobs"], params(["test.noop"])).fetchall()
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
