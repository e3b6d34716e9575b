"""What steering costs a claim, and what fair shares do for a small key (issue 19).

    python benchmarks/steering.py claim [--n 200] [--jobs 10000] [--keys 100] [--runs 3]
    python benchmarks/steering.py fairness [--big 10000] [--small 10] [--runs 3]

``claim``: on a fresh ``poel_bench_*`` database migrated by the installed ``poel-host``,
``--jobs`` due ``bench.noop`` jobs spread over ``--keys`` keys wait. For each
configuration (each in its own database) it times the worker's claim of 50 jobs
(``Store.claim_jobs`` when nothing is steered, ``Store.claim_steered`` otherwise, as the
producer runs them), ``--n`` times, each in a transaction rolled back so the backlog
stays. The configurations take turns claim by claim. It prints JSON: the median round
trip in µs (the median of ``--runs`` runs, each the median of ``--n`` claims), its ratio
to the plain claim's, and the paired ratio (the median, over a run's rounds, of each
claim's time over the plain claim's of the same round; the median of the runs'). The limits are set
high enough never to bind: what is measured is what enforcing them costs.

``fairness``: a real ``poel-host serve`` (c=50) drains ``--big`` jobs of one key enqueued
just before ``--small`` jobs of another, both due at once, with and without fair shares
on the type (runs interleaved), and prints the small key's p50 and max wait (start minus
the enqueueing commit, by the database's clock), the big key's p50, and the whole drain's time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from adapters.poel import Poel
from adapters.poel import _env as poel_env
from claim_shapes import RolledBack
from common import create_database, drop_database, scratch_name
from psycopg.rows import dict_row

from poel_host.store import Store

LIMIT = 50
# Each configuration's steering row for bench.noop (None: nothing steered).
CONFIGS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "concurrency": {"concurrency": 1_000_000},
    "per_key_concurrency": {"concurrency": 1_000_000, "per_key": True},
    "rate": {"rate": 1_000_000, "per_ms": 1000},
    "fair": {"fair": True},
    "all": {"concurrency": 1_000_000, "rate": 1_000_000, "per_ms": 1000, "fair": True},
}


def _steer(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    names = ["kind", "name", *row]
    conn.execute(
        f"INSERT INTO poel.steering ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
        ["type", "bench.noop", *row.values()],
    )


def _claimer(store: Store, steered: bool) -> Callable[[], float]:
    """One claim of ``LIMIT`` jobs as the worker's producer runs it; returns its seconds."""
    params: dict[str, Any] = {
        "job_types": ["bench.noop"],
        "queues": None,
        "limit": LIMIT,
        "owner": "steering-bench",
        "lease_ms": None,
    }

    def claim() -> float:
        params["token"] = str(uuid.uuid4())
        start = time.perf_counter()
        if steered:
            rows, _ = store.claim_steered(**params)
        else:
            rows = store.claim_jobs(**params)
        took = time.perf_counter() - start
        assert len(rows) == LIMIT, len(rows)
        return took

    return claim


@contextlib.contextmanager
def claim_database(config: str, jobs: int, keys: int) -> Iterator[Callable[[], float]]:
    """A scratch database holding the backlog, steered as ``config`` says."""
    name = scratch_name("steer")
    url = create_database(name)
    try:
        env = {**os.environ, **poel_env(url)}
        subprocess.run([Poel.host, "migrate"], env=env, check=True, capture_output=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO poel.jobs (job_type, key)"
                " SELECT 'bench.noop', 'k' || (g %% %s) FROM generate_series(1, %s) g",
                [keys, jobs],
            )
            row = CONFIGS[config]
            if row is not None:
                _steer(conn, row)
            conn.execute("VACUUM ANALYZE poel.jobs")
            yield _claimer(Store("poel", RolledBack(conn)), row is not None)
    finally:
        drop_database(name)


def claim_run(jobs: int, keys: int, n: int) -> dict[str, list[float]]:
    """Every configuration's claims, taken in turn claim by claim, so that a shared
    machine's drift (which moves a claim's time by 2x within seconds) falls on all of
    them alike; the order turns each round so no configuration always goes first."""
    took: dict[str, list[float]] = {config: [] for config in CONFIGS}
    with contextlib.ExitStack() as stack:
        claims = {c: stack.enter_context(claim_database(c, jobs, keys)) for c in CONFIGS}
        order = list(CONFIGS)
        for _ in range(10):  # warm: plans, caches
            for claim in claims.values():
                claim()
        for i in range(n):
            for config in order[i % len(order) :] + order[: i % len(order)]:
                took[config].append(claims[config]())
    return took


def bench_claim(args: argparse.Namespace) -> dict[str, Any]:
    medians: dict[str, list[float]] = {config: [] for config in CONFIGS}
    paired: dict[str, list[float]] = {config: [] for config in CONFIGS}
    for _ in range(args.runs):
        took = claim_run(args.jobs, args.keys, args.n)
        for config, times in took.items():
            medians[config].append(1e6 * statistics.median(times))
            paired[config].append(
                statistics.median(t / p for t, p in zip(times, took["plain"], strict=True))
            )
    median = {c: statistics.median(v) for c, v in medians.items()}
    return {
        "jobs": args.jobs,
        "keys": args.keys,
        "claim_limit": LIMIT,
        "claims_per_run": args.n,
        "runs": args.runs,
        "median_us": {c: round(v) for c, v in median.items()},
        "ratio_to_plain": {c: round(v / median["plain"], 2) for c, v in median.items()},
        "paired_ratio_to_plain": {c: round(statistics.median(v), 2) for c, v in paired.items()},
        "runs_us": {c: [round(v) for v in values] for c, values in medians.items()},
    }


def fairness_run(fair: bool, big: int, small: int) -> dict[str, float]:
    name = scratch_name("fair")
    url = create_database(name)
    system = Poel(concurrency=50, log="warning")
    try:
        system.install(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            if fair:
                _steer(conn, {"fair": True})
            command, env = system.command(url, "noop")
            worker = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            try:
                time.sleep(3)  # started and idle (its start is not what is measured)
                with conn.transaction():  # both due at once, big first in claim order
                    conn.execute(
                        "INSERT INTO poel.jobs (job_type, key)"
                        " SELECT 'bench.noop', 'big' FROM generate_series(1, %s)",
                        [big],
                    )
                    conn.execute(
                        "INSERT INTO poel.jobs (job_type, key)"
                        " SELECT 'bench.noop', 'small' FROM generate_series(1, %s)",
                        [small],
                    )
                # Waits count from the commit (the moment they are due for a worker), not
                # from created_at (the inserting transaction's start, a 10,000-row insert
                # earlier).
                due = conn.execute("SELECT clock_timestamp() AS t").fetchone()
                assert due is not None
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    left = conn.execute(
                        "SELECT count(*) AS n FROM poel.jobs WHERE state IN ('queued', 'running')"
                    ).fetchone()
                    if left and left["n"] == 0:
                        break
                    time.sleep(0.2)
                else:
                    raise RuntimeError("the drain did not finish in 10 minutes")
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            waits = conn.execute(
                "SELECT key, percentile_cont(0.5) WITHIN GROUP (ORDER BY w) AS p50,"
                " max(w) AS max, max(f) - min(c) AS drain"
                " FROM (SELECT key, extract(epoch FROM started_at - %(due)s) AS w,"
                "              finished_at AS f, %(due)s AS c FROM poel.all_jobs) AS x"
                " GROUP BY key",
                {"due": due["t"]},
            ).fetchall()
            by = {r["key"]: r for r in waits}
            return {
                "small_p50_ms": 1000 * float(by["small"]["p50"]),
                "small_max_ms": 1000 * float(by["small"]["max"]),
                "big_p50_ms": 1000 * float(by["big"]["p50"]),
                "drain_s": max(float(r["drain"].total_seconds()) for r in waits),
            }
    finally:
        drop_database(name)


def bench_fairness(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for _ in range(args.runs):
        runs["without"].append(fairness_run(False, args.big, args.small))
        runs["with"].append(fairness_run(True, args.big, args.small))
    medians = {
        label: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
        for label, rs in runs.items()
    }
    return {
        "big": args.big,
        "small": args.small,
        "concurrency": 50,
        "runs": args.runs,
        "median": medians,
        "small_p50_ratio_with_to_without": round(
            medians["with"]["small_p50_ms"] / medians["without"]["small_p50_ms"], 3
        ),
        "drain_ratio_with_to_without": round(
            medians["with"]["drain_s"] / medians["without"]["drain_s"], 2
        ),
        "runs_detail": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    claim = sub.add_parser("claim")
    claim.add_argument("--n", type=int, default=200)
    claim.add_argument("--jobs", type=int, default=10_000)
    claim.add_argument("--keys", type=int, default=100)
    claim.add_argument("--runs", type=int, default=3)
    fairness = sub.add_parser("fairness")
    fairness.add_argument("--big", type=int, default=10_000)
    fairness.add_argument("--small", type=int, default=10)
    fairness.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = bench_claim(args) if args.what == "claim" else bench_fairness(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
