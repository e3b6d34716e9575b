"""What one claim of one job costs, apart from serve: the process lane's claim, measured bare.

    python benchmarks/claim_latency.py [--n 400] [--rows 20000]

On a fresh ``poel_bench_*`` database with ``--rows`` queued ``bench.noop_process`` jobs,
runs Poel's own ``claim_jobs`` statement (from the installed ``poel_host``), limit 1, ``--n``
times on one plain psycopg connection (no gevent, no pool), as the process lane does for
each job; prints its round trip with ``synchronous_commit`` on and off (the difference is
the commit's WAL flush) and with a generic plan, the server's planning and execution time
(``EXPLAIN ANALYZE`` in a rolled-back transaction), and a one-row UPDATE and ``SELECT 1``
for scale. Compare with the claim's time inside serve (``profile.py --trace``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import psycopg
from adapters.poel import PoelExecutor
from common import create_database, drop_database, scratch_name
from psycopg.rows import dict_row

from poel_host.store import claim_query


def timed(conn: psycopg.Connection[Any], query: Any, params: Any, n: int) -> str:
    cur = conn.cursor(row_factory=dict_row)
    took = []
    for _ in range(n):
        start = time.perf_counter()
        cur.execute(query, params).fetchall()
        took.append(time.perf_counter() - start)
    return (
        f"mean {1e6 * statistics.mean(took):,.0f} µs, p50 {1e6 * statistics.median(took):,.0f} µs"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="claims timed per setting")
    parser.add_argument("--rows", type=int, default=20_000, help="queued jobs")
    args = parser.parse_args()
    poel = PoelExecutor("process")
    name = scratch_name("claim")
    url = create_database(name)
    try:
        poel.install(url)
        claim = claim_query("poel", 2)
        params = {
            "job_types": ["bench.cpu", "bench.noop_process"],
            "queues": None,
            "limit": 1,
            "owner": "claim-latency",
            "token": "00000000-0000-4000-8000-000000000000",
            "lease_ms": 30_000,
        }
        with psycopg.connect(url, autocommit=True) as conn:
            poel.insert(conn, args.rows, "noop")
            conn.execute("VACUUM ANALYZE poel.jobs")
            print(f"claim of 1 job, synchronous_commit=on:  {timed(conn, claim, params, args.n)}")
            conn.execute("SET synchronous_commit = off")
            print(f"claim of 1 job, synchronous_commit=off: {timed(conn, claim, params, args.n)}")
            conn.execute("SET synchronous_commit = on")
            conn.execute("SET plan_cache_mode = force_generic_plan")
            print(f"claim of 1 job, a generic plan:         {timed(conn, claim, params, args.n)}")
            conn.execute("RESET plan_cache_mode")
            plans = []
            explain = b"EXPLAIN (ANALYZE, FORMAT JSON) " + claim.as_bytes(conn)
            for _ in range(50):
                conn.execute("BEGIN")
                row = conn.execute(explain, params).fetchone()
                conn.execute("ROLLBACK")
                assert row is not None
                plans.append(row[0][0])
            planning = statistics.median(p["Planning Time"] for p in plans)
            execution = statistics.median(p["Execution Time"] for p in plans)
            print(
                f"server: planning {1000 * planning:,.0f} µs, execution {1000 * execution:,.0f} µs"
                " (medians of 50 EXPLAIN ANALYZE, no commit)"
            )
            conn.execute("CREATE TABLE one (i int)")
            conn.execute("INSERT INTO one VALUES (0)")
            update = timed(conn, "UPDATE one SET i = i + 1 RETURNING i", None, args.n)
            print(f"a one-row UPDATE and its commit: {update}")
            print(f"SELECT 1: {timed(conn, 'SELECT 1', None, args.n)}")
    finally:
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
