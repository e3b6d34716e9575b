"""pgqueuer 1.6 with its asyncpg driver (its psycopg driver is several times slower).

Configured as its documentation shows: ``PgQueuer.from_asyncpg_connection``, one
``@pgq.entrypoint`` per job kind, ``run(batch_size=10)``; the concurrency-limited variant
passes ``concurrency_limit=10`` to the entrypoint. pgqueuer deletes a job when it
finishes and keeps its history in ``pgqueuer_log``, so that is where finished jobs are
counted and timed, and where the background "finished" rows of the scale benchmark go.

Run as a worker: ``python -m adapters.pgqueuer_peer URL BATCH LIMIT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import psycopg

from adapters import System, peer_command


class PgQueuer(System):
    name = "pgqueuer"
    family = "pgqueuer"

    def __init__(self, limit: int = 0, batch: int = 10) -> None:
        super().__init__()
        self.limit = limit
        self.batch = batch
        self.slow = bool(limit)

    @property
    def config(self) -> str:
        return f"batch={self.batch} limit={self.limit or 'none'}"

    def install(self, url: str) -> None:
        asyncio.run(_install(url))

    def fill(self, conn: psycopg.Connection[Any], finished: int, future: int) -> None:
        conn.execute(
            "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated)"
            " SELECT now() - interval '1 hour', i, 'successful', 0, 'noop', true"
            " FROM generate_series(1, %s) AS i",
            [finished],
        )
        conn.execute(
            "INSERT INTO pgqueuer (priority, entrypoint, payload, execute_after, status)"
            " SELECT 0, 'noop', NULL, now() + interval '1 day', 'queued'"
            " FROM generate_series(1, %s)",
            [future],
        )

    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        conn.execute(
            "INSERT INTO pgqueuer (priority, entrypoint, payload, execute_after, status)"
            " SELECT 0, %s, NULL, now(), 'queued' FROM generate_series(1, %s)",
            [kind, n],
        )

    def enqueue_stamp(self, conn: psycopg.Connection[Any], t: float) -> None:
        conn.execute(
            "INSERT INTO pgqueuer (priority, entrypoint, payload, execute_after, status)"
            " VALUES (0, 'stamp', %s, now(), 'queued')",
            [json.dumps({"t": t}).encode()],
        )

    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        return peer_command("pgqueuer_peer", url, str(self.batch), str(self.limit))

    def done(self, conn: psycopg.Connection[Any], since: Any) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful' AND created >= %s",
            [since],
        ).fetchone()
        return int(row[0]) if row else 0

    def window(self, conn: psycopg.Connection[Any], since: Any) -> float:
        row = conn.execute(
            "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
            " - min(created) FILTER (WHERE status = 'picked'))"
            " FROM pgqueuer_log WHERE created >= %s",
            [since],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else float("nan")


async def _install(url: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def worker(url: str, batch: int, limit: int) -> None:
    import asyncpg
    from common import http_get, write_stamp
    from pgqueuer import PgQueuer as App
    from pgqueuer.models import Job

    http_url = os.environ.get("BENCH_HTTP_URL", "")
    conn = await asyncpg.connect(url)
    pgq = App.from_asyncpg_connection(conn)

    @pgq.entrypoint("noop", concurrency_limit=limit)
    async def noop(job: Job) -> None:
        pass

    @pgq.entrypoint("stamp", concurrency_limit=limit)
    async def stamp(job: Job) -> None:
        write_stamp(json.loads(job.payload or b"{}")["t"])

    @pgq.entrypoint("http", concurrency_limit=limit)
    async def http(job: Job) -> None:
        await http_get(http_url)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    await pgq.run(batch_size=batch)


if __name__ == "__main__":
    asyncio.run(worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
