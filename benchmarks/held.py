"""What a worker writes while it holds long jobs (issue 18): ``run.py held``.

One ``serve`` (``WORKER_CONCURRENCY`` = ``--jobs``, ``POEL_LEASE_MS`` = ``--lease-ms``)
claims ``--jobs`` jobs that each sleep longer than the run (``bench.sleep``), then, once
all of them run, the database is watched for ``--window`` seconds in which nothing but
holding happens:

- ``held_rows_rewritten``: rows of the jobs table written in the window (their ``xmin``
  is a transaction of the window: a row written ten times counts once, so this says how
  many held jobs were rewritten, not how often: the WAL says that);
- ``heartbeats``: how far the worker's ``heartbeat_at`` moved, in renewal intervals;
- ``wal_bytes_per_s``: the server's WAL over the window (run it on a server of its own,
  ``BENCH_DATABASE_URL``: the figure is the server's whole).

Before issue 18, each renewal (every third of the lease) rewrote every held job's row:
1,000 jobs with a 3 s lease, 1,000 rows a second. Now the heartbeat is the lease of every
held job. With ``--poel-before VENV`` the code before runs beside it, interleaved.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg
from adapters import System
from common import Results, note, wait_for

SLEEP_S = 600  # longer than any run: the jobs are stopped with their worker


def held(system: System, template: str, run_worker: Any, args: argparse.Namespace) -> dict:
    """One run: claim ``args.jobs`` sleeping jobs, then watch ``args.window`` seconds."""
    lease_ms = args.lease_ms or 3000

    def prepare(conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO poel.jobs (job_type, payload)"
            " SELECT 'bench.sleep', jsonb_build_object('seconds', %s::int)"
            " FROM generate_series(1, %s)",
            [SLEEP_S, args.jobs],
        )

    def running(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT count(*) FROM poel.jobs WHERE state = 'running'").fetchone()
        return bool(row and row[0] >= args.jobs)

    def body(conn: psycopg.Connection[Any], since: Any, proc: Any) -> dict[str, Any]:
        wait_for(lambda: running(conn), 120, f"{args.jobs} jobs running", proc, interval=0.25)
        time.sleep(lease_ms / 1000)  # a renewal or more past the last claim
        start = conn.execute(
            "SELECT pg_current_wal_lsn()::text, txid_current(),"
            " (SELECT max(heartbeat_at) FROM poel.workers)"
        ).fetchone()
        assert start is not None
        lsn, xid, beat = start
        time.sleep(args.window)
        end = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint,"
            " (SELECT count(*) FROM poel.jobs"
            "  WHERE xmin::text::bigint >= (%s::bigint %% 4294967296)),"
            " extract(epoch FROM (SELECT max(heartbeat_at) FROM poel.workers) - %s),"
            " (SELECT count(*) FROM poel.jobs WHERE state = 'running')",
            [lsn, xid, beat],
        ).fetchone()
        assert end is not None
        wal, rows, moved_s, still = end
        interval_s = lease_ms / 3000
        return {
            "jobs_running": int(still),
            "window_s": args.window,
            "held_rows_rewritten": int(rows),
            "heartbeats": round(float(moved_s or 0) / interval_s, 1),
            "wal_bytes_per_s": round(int(wal) / args.window),
        }

    env = {
        "WORKER_CONCURRENCY": str(args.jobs),
        "POEL_LEASE_MS": str(lease_ms),
        "POEL_SHUTDOWN_TIMEOUT_MS": "1000",
        "POEL_MAX_HANDBACKS": "1000",
    }
    return dict(run_worker(system, template, prepare, body, env, "sleep"))


def bench(
    args: argparse.Namespace,
    templates: Any,
    systems: list[System],
    interleave: Any,
    run_worker: Any,
) -> str:
    metrics = ["held_rows_rewritten", "heartbeats", "wal_bytes_per_s", "jobs_running"]
    results = Results("held", metrics)
    note(
        f"[held] {args.jobs} jobs of {SLEEP_S} s, lease {args.lease_ms or 3000} ms, {args.window} s"
    )
    interleave(
        results,
        [(s, "") for s in systems],
        args.runs,
        lambda s, _: held(s, templates.get(s), run_worker, args),
    )
    return results.summarize("wal_bytes_per_s", higher_is_better=False)
