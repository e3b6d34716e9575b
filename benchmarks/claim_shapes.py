"""What a claim costs as the backlog changes shape around the jobs it takes (issue 16).

    python benchmarks/claim_shapes.py [--n 200] [--rows 100000] [--runs 3]

On a fresh ``poel_bench_*`` database migrated by the installed ``poel-host``, 10 due
``bench.noop`` jobs wait, and around them, in turn: nothing; ``--rows`` future jobs with
distinct priorities; ``--rows`` future jobs of one priority; ``--rows`` due jobs of a
type this worker does not handle, at a higher priority; ``--rows`` finished jobs. For
each shape it times the installed host's own claim (``Store.claim_jobs``, limit 10, the
worker's statement and parameters) ``--n`` times, each in a transaction rolled back so
the 10 jobs stay due, and prints JSON: the median round trip per shape in µs (the median
of ``--runs`` runs, each the median of ``--n`` claims) and its ratio to the empty shape
measured in the same run. A claim whose cost depends on the shape of the backlog shows it
here. Works against an older checkout's venv too (it passes a lease token only to a host
that takes one), so before and after are measured the same way.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from adapters.poel import Poel
from adapters.poel import _env as poel_env
from common import create_database, drop_database, scratch_name

from poel_host.store import Store

SHAPES: dict[str, str] = {
    "empty": "SELECT 1",
    "future_distinct_priorities": (
        "INSERT INTO poel.jobs (job_type, priority, run_at)"
        " SELECT 'bench.noop', g, now() + interval '1 day' FROM generate_series(1, %(rows)s) g"
    ),
    "future_one_priority": (
        "INSERT INTO poel.jobs (job_type, run_at)"
        " SELECT 'bench.noop', now() + interval '1 day' FROM generate_series(1, %(rows)s)"
    ),
    "other_type_due_higher_priority": (
        "INSERT INTO poel.jobs (job_type, priority)"
        " SELECT 'bench.elsewhere', 10 FROM generate_series(1, %(rows)s)"
    ),
    "finished": (
        "INSERT INTO poel.jobs (job_type, state, attempts, finished_at)"
        " SELECT 'bench.noop', 'succeeded', 1, now() FROM generate_series(1, %(rows)s)"
    ),
}


class RolledBack:
    """A store source that runs each statement in a transaction it rolls back."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def run(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        with self.conn.transaction(force_rollback=True):
            return work(self.conn)


def claim_median_us(store: Store, n: int) -> float:
    params: dict[str, Any] = {
        "job_types": ["bench.noop"],
        "queues": None,
        "limit": 10,
        "owner": "claim-shapes",
        "lease_ms": 30_000,
    }
    if "held" in inspect.signature(store.claim_jobs).parameters:
        params["held"] = []  # the claim before issue 16 excluded the jobs its worker held
    if "token" in inspect.signature(store.claim_jobs).parameters:
        params["token"] = str(uuid.uuid4())
    took = []
    for _ in range(n):
        start = time.perf_counter()
        rows = store.claim_jobs(**params)
        took.append(time.perf_counter() - start)
        assert len(rows) == 10, len(rows)
    return 1e6 * statistics.median(took)


def one_run(shape: str, rows: int, n: int) -> float:
    name = scratch_name("shape")
    url = create_database(name)
    try:
        # Its progress lines would mix with the JSON on stdout.
        env = {**os.environ, **poel_env(url)}
        subprocess.run([Poel.host, "migrate"], env=env, check=True, capture_output=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO poel.jobs (job_type) SELECT 'bench.noop' FROM generate_series(1, 10)"
            )
            conn.execute(SHAPES[shape], {"rows": rows})
            conn.execute("VACUUM ANALYZE poel.jobs")
            store = Store("poel", RolledBack(conn))
            claim_median_us(store, 10)  # warm: plans, caches
            return claim_median_us(store, n)
    finally:
        drop_database(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="claims timed per run")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each shape")
    parser.add_argument("--runs", type=int, default=3, help="runs per shape (interleaved)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    for _ in range(args.runs):
        for shape in SHAPES:  # interleaved, so that drift on a shared machine spreads evenly
            results[shape].append(one_run(shape, args.rows, args.n))
    medians = {shape: statistics.median(values) for shape, values in results.items()}
    print(
        json.dumps(
            {
                "rows": args.rows,
                "claims_per_run": args.n,
                "runs": args.runs,
                "median_us": {s: round(v) for s, v in medians.items()},
                "ratio_to_empty": {s: round(v / medians["empty"], 2) for s, v in medians.items()},
                "runs_us": {s: [round(v) for v in values] for s, values in results.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
