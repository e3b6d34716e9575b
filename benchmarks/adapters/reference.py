"""The reference loops: what plain psycopg on one connection can do, as a yardstick.

``batch=100`` claims up to 100 jobs per statement (``FOR UPDATE SKIP LOCKED``) and
completes them in one statement: the ceiling a batched worker can approach.
``batch=1`` claims and completes one job at a time: what a naive worker gets.
Both wait on LISTEN (a statement-level trigger) when the queue is empty, so the
latency benchmark also has a floor to compare with. Jobs run inline, one after
another: these loops have no concurrency, so the I/O benchmark leaves them out.

Run as a worker: ``python -m adapters.reference URL BATCH``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from typing import Any

import psycopg
from common import write_stamp

from adapters import System, peer_command

SCHEMA = """
CREATE TABLE bench_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'queued',
    run_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX bench_jobs_claim ON bench_jobs (run_at, id) WHERE state = 'queued';
CREATE INDEX bench_jobs_finished ON bench_jobs (finished_at) WHERE state = 'succeeded';
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_jobs', ''); RETURN NULL; END $$;
CREATE TRIGGER bench_jobs_notify AFTER INSERT ON bench_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();
"""

CLAIM = """
WITH due AS (
    SELECT id FROM bench_jobs WHERE state = 'queued' AND run_at <= now()
    ORDER BY run_at, id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE bench_jobs AS j SET state = 'running', started_at = now()
FROM due WHERE j.id = due.id
RETURNING j.id, j.kind, j.payload
"""

COMPLETE = "UPDATE bench_jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY(%s)"


class Reference(System):
    family = "reference"

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.name = "reference-batch" if batch > 1 else "reference-one"
        self.slow = batch == 1

    @property
    def config(self) -> str:
        return f"batch={self.batch}"

    def install(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)

    def fill(self, conn: psycopg.Connection[Any], finished: int, future: int) -> None:
        conn.execute(
            "INSERT INTO bench_jobs (kind, state, run_at, created_at, started_at, finished_at)"
            " SELECT 'noop', 'succeeded', t, t, t, t"
            " FROM generate_series(1, %s), LATERAL (SELECT now() - interval '1 hour' AS t) x",
            [finished],
        )
        conn.execute(
            "INSERT INTO bench_jobs (kind, run_at)"
            " SELECT 'noop', now() + interval '1 day' FROM generate_series(1, %s)",
            [future],
        )

    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        conn.execute(
            "INSERT INTO bench_jobs (kind) SELECT %s FROM generate_series(1, %s)", [kind, n]
        )

    def enqueue_stamp(self, conn: psycopg.Connection[Any], t: float) -> None:
        conn.execute(
            "INSERT INTO bench_jobs (kind, payload) VALUES ('stamp', %s::jsonb)",
            [json.dumps({"t": t})],
        )

    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        return peer_command("reference", url, str(self.batch))

    def done(self, conn: psycopg.Connection[Any], since: Any) -> int:
        row = conn.execute(
            "SELECT count(*) FROM bench_jobs WHERE state = 'succeeded' AND finished_at >= %s",
            [since],
        ).fetchone()
        return int(row[0]) if row else 0

    def window(self, conn: psycopg.Connection[Any], since: Any) -> float:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM bench_jobs"
            " WHERE state = 'succeeded' AND finished_at >= %s",
            [since],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else float("nan")


def run_job(kind: str, payload: dict[str, Any], http_url: str | None) -> None:
    if kind == "stamp":
        write_stamp(payload["t"])
    elif kind == "http" and http_url:
        with urllib.request.urlopen(http_url, timeout=30) as response:
            response.read()


def worker(url: str, batch: int) -> None:
    """Claim, run inline, complete; wait on LISTEN when there is nothing due."""
    http_url = os.environ.get("BENCH_HTTP_URL")
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN bench_jobs")
        while not stop:
            rows = conn.execute(CLAIM, [batch]).fetchall()
            for _id, kind, payload in rows:
                run_job(kind, payload, http_url)
            if rows:
                conn.execute(COMPLETE, [[r[0] for r in rows]])
            if len(rows) < batch:
                for _ in conn.notifies(timeout=0.5, stop_after=1):
                    pass


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
