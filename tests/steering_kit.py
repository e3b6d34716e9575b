"""Helpers of the steered claim's database-level tests: jobs written straight into the
table, steering rows, and claims (steered and plain) on the test's connection."""

from __future__ import annotations

import uuid
from typing import Any

from poel_host.store import claim_query

LIMIT = 50


def jobs(
    conn: Any,
    n: int,
    job_type: str = "test.noop",
    *,
    key: str | None = None,
    queue: str = "default",
    priority: int = 0,
) -> None:
    conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, priority, key)"
        " SELECT %s, %s, %s, %s FROM generate_series(1, %s)",
        [job_type, queue, priority, key, n],
    )


def steer(conn: Any, kind: str, name: str, **columns: Any) -> None:
    names = ["kind", "name", *columns]
    conn.execute(
        f"INSERT INTO poel.steering ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
        [kind, name, *columns.values()],
    )


def steered(conn: Any, job_types: list[str], limit: int = LIMIT) -> tuple[list[Any], Any]:
    rows = conn.execute(
        "SELECT * FROM poel.claim_steered(%s, NULL, %s, 'w', %s, NULL)",
        [job_types, limit, str(uuid.uuid4())],
    ).fetchall()
    return [r for r in rows if r["id"] is not None], [
        r["reopens_at"] for r in rows if r["id"] is None
    ]


def plain(conn: Any, job_types: list[str]) -> list[Any]:
    params = {
        "job_types": job_types,
        "queues": None,
        "limit": LIMIT,
        "owner": "w",
        "token": str(uuid.uuid4()),
        "lease_ms": None,
    }
    return conn.execute(claim_query("poel", len(job_types)), params).fetchall()


def keys(conn: Any, rows: list[Any]) -> list[str]:
    return [
        conn.execute("SELECT key FROM poel.jobs WHERE id = %s", [r["id"]]).fetchone()["key"]
        for r in rows
    ]


def running(conn: Any, where: str = "true") -> int:
    return conn.execute(
        f"SELECT count(*) AS n FROM poel.jobs WHERE state = 'running' AND {where}"
    ).fetchone()["n"]


def finish(conn: Any, n: int | None = None) -> None:
    conn.execute(
        "UPDATE poel.jobs SET state = 'succeeded', finished_at = now() WHERE id IN"
        " (SELECT id FROM poel.jobs WHERE state = 'running' ORDER BY id LIMIT %s)",
        [n],
    )
