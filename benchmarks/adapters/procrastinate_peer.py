"""procrastinate 3.10, configured as its documentation shows.

``App(connector=PsycopgConnector(conninfo=...))``, async tasks, and
``run_worker_async(concurrency=N)`` (its default listen/notify on, jobs kept after they
finish). Its ``procrastinate_events`` table records each job's start and success
(database time), which is where it is counted and timed.

The ``cpu`` job is a sync task, the way procrastinate runs CPU-bound work: it calls a sync
task through ``asgiref``'s ``sync_to_async``, in a thread of the event loop's default
executor, up to N at once, all of them under the one GIL.

Run as a worker: ``python -m adapters.procrastinate_peer URL CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import psycopg

from adapters import System, peer_command

if TYPE_CHECKING:
    from procrastinate import App

INSERT = (
    "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, scheduled_at)"
    " SELECT 'default', %s, '{}', 'todo', NULL FROM generate_series(1, %s)"
)


def make_app(url: str) -> App:
    from procrastinate import App, PsycopgConnector

    return App(connector=PsycopgConnector(conninfo=url))


class Procrastinate(System):
    name = "procrastinate"
    family = "procrastinate"
    slow = True

    def install(self, url: str) -> None:
        async def apply() -> None:
            app = make_app(url)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())

    def fill(self, conn: psycopg.Connection[Any], finished: int, future: int) -> None:
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)"
            " SELECT 'default', 'noop', '{}', 'succeeded', 1 FROM generate_series(1, %s)",
            [finished],
        )
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, scheduled_at)"
            " SELECT 'default', 'noop', '{}', 'todo', now() + interval '1 day'"
            " FROM generate_series(1, %s)",
            [future],
        )

    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        conn.execute(INSERT, [kind, n])

    def enqueue_stamp(self, conn: psycopg.Connection[Any], t: float) -> None:
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
            " VALUES ('default', 'stamp', %s::jsonb, 'todo')",
            [json.dumps({"t": t})],
        )

    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        return peer_command("procrastinate_peer", url, str(self.concurrency or 1))

    def mark(self, conn: psycopg.Connection[Any]) -> Any:
        """The last job id before the run: its events table has no index on time."""
        row = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()
        return row[0] if row else 0

    def done(self, conn: psycopg.Connection[Any], since: Any) -> int:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE id > %s AND status = 'succeeded'",
            [since],
        ).fetchone()
        return int(row[0]) if row else 0

    def window(self, conn: psycopg.Connection[Any], since: Any) -> float:
        row = conn.execute(
            "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded')"
            " - min(at) FILTER (WHERE type = 'started'))"
            " FROM procrastinate_events WHERE job_id > %s",
            [since],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else float("nan")


async def worker(url: str, concurrency: int) -> None:
    from common import cpu_job, http_get, write_stamp

    http_url = os.environ.get("BENCH_HTTP_URL", "")
    app = make_app(url)

    @app.task(name="noop")
    async def noop() -> None:
        pass

    @app.task(name="stamp")
    async def stamp(t: float) -> None:
        write_stamp(t)

    @app.task(name="http")
    async def http() -> None:
        await http_get(http_url)

    @app.task(name="cpu")
    def cpu() -> None:  # sync: procrastinate runs it in a thread
        cpu_job()

    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency)


if __name__ == "__main__":
    asyncio.run(worker(sys.argv[1], int(sys.argv[2])))
