"""The statements that run every few seconds on every worker, and every dashboard page's,
read indexes, never the whole jobs table: checked with EXPLAIN on a table of 100,000 jobs
finished days ago (retention keeps a week), a few hundred queued, running, failed and
recently finished, with fresh statistics, as the planner sees a long-lived queue."""

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
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, state, finished_at, last_error, lease_owner,"
        " lease_expires_at, started_at)"
        " SELECT 'kind.' || (n % 3), s::poel.job_state,"
        "        CASE WHEN s <> 'running' THEN now() - n * interval '1 second' END,"
        "        CASE WHEN s = 'failed' THEN 'boom ' || n END,"
        "        CASE WHEN s = 'running' THEN 'w' END,"
        "        CASE WHEN s = 'running' THEN now() + interval '30 seconds' END, now()"
        " FROM generate_series(1, 100) AS n, unnest(ARRAY['running', 'failed', 'succeeded'])"
        " AS s"
    )
    poel_conn.execute(
        "UPDATE poel.jobs SET finished_at = now() - interval '3 days' WHERE job_type = 'done.kind'"
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


TOKEN = "00000000-0000-4000-8000-000000000000"


def test_the_heartbeat_reads_no_jobs_beyond_the_ones_it_renews(big_table):
    params = {
        "ids": [1, 2, 3],
        "tokens": [TOKEN] * 3,
        "owner": "w",
        "lease_ms": 1000,
        "draining": False,
    }
    scans = scans_of_jobs(plan(big_table, "heartbeat", params))
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans


TOKENED = {  # the statements that match attempts by (id, lease token)
    "finish_succeeded": {"ids": [1, 2, 3], "tokens": [TOKEN] * 3, "schema": "poel"},
    "finish_jobs": {
        "ids": [1, 2],
        "tokens": [TOKEN] * 2,
        "states": ["failed", "succeeded"],
        "errors": ["e", None],
        "delays_ms": [0, 0],
        "tracebacks": [None, None],
        "results": [None, '{"a": 1}'],
        "progresses": [0.5, None],
        "progress_messages": ["half", None],
        "schema": "poel",
    },
    "write_progress": {
        "ids": [1, 2],
        "tokens": [TOKEN] * 2,
        "progresses": [0.5, 1.0],
        "messages": ["half", None],
    },
    "release_jobs": {
        "ids": [1, 2],
        "tokens": [TOKEN] * 2,
        "started": True,
        "max_handbacks": 3,
        "schema": "poel",
    },
    "release_claims": {"tokens": [TOKEN], "schema": "poel"},
}


@pytest.mark.parametrize("name", sorted(TOKENED))
def test_statements_about_attempts_read_no_jobs_beyond_theirs(big_table, name):
    scans = scans_of_jobs(plan(big_table, name, TOKENED[name]))
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans


def test_the_jobs_tables_statistics_read_no_row_of_it(big_table):
    assert scans_of_jobs(plan(big_table, "jobs_table_stats", {"schema": "poel"})) == []


JOBS_PAGE = {
    "before": 2**63 - 1,
    "limit": 50,
    "window": 10_000,
    "state": None,
    "job_type": None,
    "queue": None,
}
DASHBOARD = [
    ("queue_depths", {"cap": 10_000}),
    ("dashboard_running_counts", None),
    ("dashboard_failed_counts", None),
    ("dashboard_last_hour", None),
    ("dashboard_running", {"limit": 500}),
    ("dashboard_jobs", {**JOBS_PAGE, "error": None}),
    ("dashboard_jobs", {**JOBS_PAGE, "state": "succeeded", "error": None}),
    ("dashboard_jobs", {**JOBS_PAGE, "job_type": "kind.1", "queue": "q1", "error": None}),
    ("dashboard_jobs", {**JOBS_PAGE, "before": 50_000, "error": "boom"}),
    ("dashboard_failed_jobs", {**JOBS_PAGE, "error": None}),
    ("dashboard_failed_jobs", {**JOBS_PAGE, "job_type": "kind.2", "error": "boom 2"}),
    ("get_job", {"id": 77}),
    ("dashboard_retry_failed_type", {"job_type": "kind.0"}),
    ("dashboard_delete_job", {"id": 77}),
]


def test_dashboard_queries_never_scan_the_jobs_table(big_table):
    seq_scans = {}
    for i, (name, params) in enumerate(DASHBOARD):
        scans = scans_of_jobs(plan(big_table, name, params))
        assert scans, f"{name}: the plan reads no jobs?"
        if any(kind == "Seq Scan" for kind, _ in scans):
            seq_scans[f"{i}: {name}"] = scans
    assert seq_scans == {}


def test_the_workflows_page_walks_the_workflows_primary_key(poel_conn):
    """The dashboard's workflows page looks at a window of the newest workflows through
    the primary key, whatever the state filter: never the whole table."""
    poel_conn.execute(
        "INSERT INTO poel.workflows (name, state, steps, steps_left)"
        " SELECT 'w' || n, CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'succeeded' END, 1, 0"
        " FROM generate_series(1, 20000) AS n"
    )
    poel_conn.execute("ANALYZE poel.workflows")
    for state in (None, "failed"):
        params = {"before": 2**63 - 1, "limit": 50, "window": 10_000, "state": state}
        scans = [
            (n["Node Type"], n.get("Index Name"))
            for n in nodes(plan(poel_conn, "dashboard_workflows", params))
            if n.get("Relation Name") == "workflows"
        ]
        assert scans and all(kind != "Seq Scan" for kind, _ in scans), (state, scans)
