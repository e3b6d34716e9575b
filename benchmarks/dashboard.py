"""Each dashboard page's render time with a million jobs in the table (issue 12).

A scratch database gets ``--rows`` jobs shaped like a queue kept for a week: most of them
succeeded days ago, a backlog of queued jobs over five types and two queues, a dead letter
with errors, a thousand running, and the last hour's finished jobs; then VACUUM ANALYZE,
as autovacuum would have done. A real ``poel-host dashboard`` serves it, and every page is
fetched ``--repeat`` times over HTTP (after one warm-up): the median and the worst time of
each, the whole request as a browser would wait for it, database included.

    /work/bench-venv/bin/python benchmarks/dashboard.py --rows 1000000

Prints one JSON line per page, then a markdown table (for RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    create_database,
    drop_database,
    dsn,
    emit,
    note,
    scratch_name,
    start_process,
    stop_process,
    wait_for,
)

PAGES = [
    "/",
    "/jobs",
    "/jobs?state=failed",
    "/jobs?state=failed&type=bench.kind3",
    "/jobs?type=bench.kind2",
    "/jobs?error=timeout",
    "/jobs?state=queued&queue=q1",
    "/jobs/{job}",
    "/running",
    "/schedules",
    "/workers",
    "/audit",
]


def fill(url: str, rows: int) -> int:
    import psycopg

    queued, failed, running, recent = rows // 20, rows // 50, 1000, rows // 50
    old = rows - queued - failed - running - recent
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO poel.jobs (job_type, queue, state, payload, finished_at, created_at)"
            " SELECT 'bench.kind' || (n %% 5), 'q' || (n %% 2), 'succeeded', '{\"n\": 1}',"
            "        now() - interval '1 day' - n * interval '500 ms',"
            "        now() - interval '1 day' - n * interval '500 ms'"
            " FROM generate_series(1, %s) AS n",
            [old],
        )
        conn.execute(
            "INSERT INTO poel.jobs (job_type, queue, state, last_error, errors, attempts,"
            " finished_at)"
            " SELECT 'bench.kind' || (n %% 5), 'q' || (n %% 2), 'failed',"
            "        'TimeoutError: timed out after ' || n || 's',"
            "        jsonb_build_array(jsonb_build_object('attempt', 1, 'error', 'boom')), 3,"
            "        now() - n * interval '1 s'"
            " FROM generate_series(1, %s) AS n",
            [failed],
        )
        conn.execute(
            "INSERT INTO poel.jobs (job_type, queue, state, finished_at)"
            " SELECT 'bench.kind' || (n %% 5), 'q' || (n %% 2), 'succeeded',"
            "        now() - n * (interval '1 hour' / %s)"
            " FROM generate_series(1, %s) AS n",
            [recent, recent],
        )
        conn.execute(
            "INSERT INTO poel.jobs (job_type, queue, state, lease_owner, lease_expires_at,"
            " started_at, attempts)"
            " SELECT 'bench.kind' || (n %% 5), 'q' || (n %% 2), 'running', 'bench:1:x',"
            "        now() + interval '30 s', now() - n * interval '10 ms', 1"
            " FROM generate_series(1, %s) AS n",
            [running],
        )
        conn.execute(
            "INSERT INTO poel.jobs (job_type, queue, run_at)"
            " SELECT 'bench.kind' || (n %% 5), 'q' || (n %% 2), now() - n * interval '10 ms'"
            " FROM generate_series(1, %s) AS n",
            [queued],
        )
        conn.execute("VACUUM ANALYZE poel.jobs")
        job = conn.execute("SELECT max(id) - %s FROM poel.jobs", [queued + 10]).fetchone()
    return int(job[0])


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--port", type=int, default=8097)
    args = parser.parse_args()

    name = scratch_name("dashboard")
    create_database(name)
    try:
        return measure(name, args)
    finally:
        drop_database(name)


def measure(name: str, args: argparse.Namespace) -> int:
    url = dsn(name)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POEL_")},
        "DATABASE_URL": url,
        "POEL_LOAD_PLUGINS": "",
        "POEL_LOG_LEVEL": "warning",
    }
    bindir = Path(sys.executable).parent
    done = start_process([str(bindir / "poel-host"), "migrate"], env, Path("/dev/null"))
    done.wait(timeout=60)
    note(f"filling {args.rows:,} rows")
    started = time.monotonic()
    job = fill(url, args.rows)
    note(f"filled in {time.monotonic() - started:.0f}s")
    proc = start_process(
        [str(bindir / "poel-host"), "dashboard", "--port", str(args.port)], env, Path("/dev/null")
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_for(lambda: _answers(base), timeout=30, what="the dashboard")
        results = []
        for page in PAGES:
            path = page.format(job=job)
            fetch(base + path)  # warm-up: plans, the first pool connection
            times = [fetch(base + path) for _ in range(args.repeat)]
            record = {
                "bench": "dashboard",
                "rows": args.rows,
                "page": path,
                "median_ms": round(statistics.median(times) * 1000, 1),
                "max_ms": round(max(times) * 1000, 1),
            }
            emit(record)
            results.append(record)
    finally:
        stop_process(proc)
    print(f"\n| page ({args.rows:,} rows) | median | worst of {args.repeat} |")
    print("|---|---|---|")
    for r in results:
        print(f"| `{r['page']}` | {r['median_ms']} ms | {r['max_ms']} ms |")
    return 0


def _answers(base: str) -> bool:
    try:
        fetch(base + "/workers")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
