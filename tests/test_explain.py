"""The statements that run every few seconds on every worker read indexes, never the whole
jobs table: checked with EXPLAIN on a table of 100,000 finished jobs and a small backlog,
with fresh statistics, as the planner sees a long-lived queue."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from poel_host.store import queries

FINISHED = 100_000


@pytest.fixture
def big_table(poel_conn):
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, state, finished_at)"
        " SELECT 'done.kind', 'default', 'succeeded', now() FROM generate_series(1, %s)",
        [FINISHED],
    )
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, queue)"
        " SELECT 'kind.' || (n % 3), 'q' || (n % 2) FROM generate_series(1, 300) AS n"
    )
    poel_conn.execute("VACUUM ANALYZE poel.jobs")
    return poel_conn


def plan(conn, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    explained = sql.SQL("EXPLAIN (FORMAT JSON) ") + queries("poel")[name]
    return conn.execute(explained, params).fetchone()["QUERY PLAN"][0]["Plan"]  # type: ignore[no-any-return]


def nodes(node: dict[str, Any]):
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def scans_of_jobs(node: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [
        (n["Node Type"], n.get("Index Name"))
        for n in nodes(node)
        if n.get("Relation Name") == "jobs"
    ]


def test_queue_depths_read_the_queued_index_alone(big_table):
    scans = scans_of_jobs(plan(big_table, "queue_depths", {"cap": 10_000}))
    assert scans, "the plan reads no jobs?"
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    assert {index for _, index in scans} == {"jobs_queued_idx"}, scans
    assert all(kind == "Index Only Scan" for kind, _ in scans), scans
    rows = big_table.execute(queries("poel")["queue_depths"], {"cap": 10_000}).fetchall()
    assert sum(row["depth"] for row in rows) == 300 and len(rows) == 6
    capped = big_table.execute(queries("poel")["queue_depths"], {"cap": 20}).fetchall()
    assert [row["depth"] for row in capped] == [20] * 6


def test_the_heartbeat_reads_no_jobs_beyond_the_ones_it_renews(big_table):
    params = {"ids": [1, 2, 3], "owner": "w", "lease_ms": 1000, "draining": False}
    scans = scans_of_jobs(plan(big_table, "heartbeat", params))
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans
