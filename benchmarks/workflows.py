"""Workflows against independent jobs (issue 20).

    python benchmarks/workflows.py [--workflows 10000] [--fan-out 10] [--runs 3]
                                   [--concurrency 100] [--serves 1] [--rate 0]
                                   [--quiet CORES --quiet-wait SECONDS] [--poel-before VENV]

``--workflows`` workflows of ``--fan-out`` parallel ``bench.noop`` steps and one fan-in
step after all of them (11 jobs a workflow by default: 110,000 jobs), against as many
independent ``bench.noop`` jobs, drained by the same ``--serves`` real ``poel-host serve``
processes (``WORKER_CONCURRENCY=--concurrency``, ``log=warning``), interleaved
(independent, workflows, independent, ...) ``--runs`` times, each on a fresh
``poel_bench_*`` database cloned from a template migrated by the installed ``poel-host``.

The jobs are enqueued before the serves start, timed apart (``enqueue_s``): the
independent jobs in one ``INSERT ... SELECT`` (as ``run.py drain`` does), the workflows
with ``poel.enqueue_workflow`` (migration 0023), ``--enqueue-batch`` workflows a
statement (``SELECT poel.enqueue_workflow(...) FROM generate_series(...)``). The drain
is timed from the database, as ``run.py drain`` does: the first job's ``started_at`` to the
last one's ``finished_at`` (``poel.all_jobs``: finished jobs move to the history at once).

For each workflow, the **fan-in latency** is its fan-in step's ``started_at`` minus the
latest ``finished_at`` of its parents (both the server's ``now()`` of the statements that
wrote them), p50/p99/max in ms; ``fanin_queued_ms`` is the part of it the fan-in step
spent due but not claimed (``started_at - run_at``: its release sets ``run_at``).

With ``--rate R`` the workflows are not enqueued in one burst before the serves start
but at R workflows a second while they run (``--workflows`` in all; the independent jobs
at the same rate of jobs): the fan-in latency then shows what releasing a step costs to a
worker with free slots, not the wait behind a backlog (a released step is due from its
release, behind every job due before it).

With ``--poel-before VENV``, the workflows run a third time in each round with that
virtualenv's ``poel-host`` (e.g. the code before a change, with ``poel-bench``), on a
template its own ``migrate`` made: ``workflows-before``.

Prints one JSON line per run, then one JSON document: medians, and the ratios
workflows ÷ independent of the medians (and workflows ÷ workflows-before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from adapters.poel import Poel
from adapters.poel import _env as poel_env
from common import (
    CpuShare,
    ServerCost,
    create_database,
    drop_database,
    emit,
    note,
    scratch_name,
    start_process,
    stop_process,
    wait_for,
    wait_quiet,
)

LOGS = Path("/tmp/poel-bench-logs")


def steps_json(fan_out: int) -> str:
    """One workflow: ``fan_out`` parallel steps, then ``join`` after all of them."""
    steps: list[dict[str, Any]] = [
        {"step": f"p{i}", "job_type": "bench.noop"} for i in range(fan_out)
    ]
    steps.append({"step": "join", "job_type": "bench.noop", "after": [s["step"] for s in steps]})
    return json.dumps(steps)


def enqueue(
    conn: psycopg.Connection[Any], mode: str, workflows: int, fan_out: int, batch: int
) -> None:
    """Enqueue ``workflows`` workflows (or as many jobs as they have), autocommit."""
    if mode == "independent":
        conn.execute(
            "INSERT INTO poel.jobs (job_type) SELECT 'bench.noop' FROM generate_series(1, %s)",
            [workflows * (fan_out + 1)],
        )
        return
    steps = steps_json(fan_out)
    left = workflows
    while left > 0:
        n = min(batch, left)
        conn.execute(
            "SELECT count(poel.enqueue_workflow('bench', %s::jsonb)) FROM generate_series(1, %s)",
            [steps, n],
        )
        left -= n


def paced(conn: psycopg.Connection[Any], mode: str, args: argparse.Namespace) -> None:
    """Enqueue at ``--rate`` workflows a second (every 50 ms what is due), while serving."""
    start = time.monotonic()
    sent = 0
    while sent < args.workflows:
        due = min(args.workflows, int((time.monotonic() - start) * args.rate) + 1)
        if due > sent:
            enqueue(conn, mode, due - sent, args.fan_out, args.enqueue_batch)
            sent = due
        time.sleep(0.05)


def live(conn: psycopg.Connection[Any]) -> bool:
    """Whether a job is still queued or running (one index probe, not a count)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM poel.jobs WHERE state IN ('queued', 'running'))"
    ).fetchone()
    return bool(row and row[0])


def settle(conn: psycopg.Connection[Any]) -> None:
    """Wait (up to a minute) until the archiver has moved every finished job."""

    def empty() -> bool:
        row = conn.execute("SELECT NOT EXISTS (SELECT FROM poel.jobs)").fetchone()
        return bool(row and row[0])

    wait_for(empty, 60, "the finished jobs archived", interval=0.1)


FANIN_SQL = """
WITH steps AS (
    SELECT workflow_id, step, run_at, started_at, finished_at
    FROM poel.all_jobs WHERE workflow_id IS NOT NULL
), parents AS (
    SELECT workflow_id, max(finished_at) AS last FROM steps WHERE step <> 'join'
    GROUP BY workflow_id
), lat AS (
    SELECT 1000 * extract(epoch FROM j.started_at - p.last) AS ms,
           1000 * extract(epoch FROM j.started_at - j.run_at) AS queued_ms,
           1000 * extract(epoch FROM j.run_at - p.last) AS release_ms, j.started_at AS started
    FROM parents AS p JOIN steps AS j ON j.workflow_id = p.workflow_id AND j.step = 'join'
)
SELECT count(*),
       count(*) FILTER (WHERE started < (SELECT max(started_at) FROM steps WHERE step <> 'join')),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
       max(ms),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY queued_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY queued_ms),
       max(release_ms)
FROM lat
"""


def fan_in(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(FANIN_SQL).fetchone()
    assert row is not None
    n, early, p50, p99, top, q50, q99, release = row
    return {
        "fanins": n,
        # fan-in steps that started before the last parallel step did: in a burst, a
        # released step is due behind every job due before it (FIFO by run_at)
        "fanins_before_last_parent_start": early,
        "fanin_p50_ms": round(float(p50), 1),
        "fanin_p99_ms": round(float(p99), 1),
        "fanin_max_ms": round(float(top), 1),
        "fanin_queued_p50_ms": round(float(q50), 1),
        "fanin_queued_p99_ms": round(float(q99), 1),
        "release_max_ms": round(float(release), 1),  # run_at after the last parent: ~0
    }


def one_run(mode: str, host: str, template: str, args: argparse.Namespace) -> dict[str, Any]:
    """One drain: ``independent`` jobs or ``workflows`` (``workflows-before``: the same,
    by another install's ``host``)."""
    name = scratch_name("wf")
    url = create_database(name, template)
    system = Poel(concurrency=args.concurrency, log="warning")
    system.host = host
    kind = "independent" if mode == "independent" else "workflows"
    jobs = args.workflows * (args.fan_out + 1)
    LOGS.mkdir(exist_ok=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            cost = ServerCost(conn).start()
            enqueue_s = None
            if not args.rate:
                began = time.perf_counter()
                enqueue(conn, kind, args.workflows, args.fan_out, args.enqueue_batch)
                enqueue_s = round(time.perf_counter() - began, 2)
                conn.execute("ANALYZE poel.jobs")  # as a running server's autovacuum would
            argv, env = system.command(url, "noop")
            serves = [
                start_process(argv, env, LOGS / f"workflows-{mode}-{i}.log")
                for i in range(args.serves)
            ]
            share = CpuShare(
                serves[0].pid,
                lambda: [p.pid for p in serves[1:]] + backends(conn),
            ).start()
            started = time.monotonic()
            try:
                if args.rate:
                    paced(conn, kind, args)
                wait_for(lambda: not live(conn), 1800, f"{jobs} jobs done", serves[0], 0.25)
                cpu = share.stop()
                wall = time.monotonic() - started
                settle(conn)  # what a finished job still costs: its move to the history
                server = cost.stop(jobs)
            finally:
                for proc in serves:
                    stop_process(proc)
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*),"
                " extract(epoch FROM max(finished_at) - min(started_at))"
                " FROM poel.all_jobs"
            ).fetchone()
            assert row is not None
            succeeded, total, seconds = int(row[0]), int(row[1]), float(row[2])
            if succeeded != jobs or total != jobs:
                raise RuntimeError(f"{succeeded} of {total} jobs succeeded, {jobs} expected")
            figures: dict[str, Any] = {
                "jobs": jobs,
                "enqueue_s": enqueue_s,
                "seconds": round(seconds, 3),
                "jobs_per_s": round(jobs / seconds, 1),
                "wall_s": round(wall, 2),
                **cpu,
                **server,
            }
            if kind == "workflows":
                done = conn.execute(
                    "SELECT count(*) FROM poel.workflows WHERE state = 'succeeded'"
                ).fetchone()
                figures["workflows_succeeded"] = int(done[0]) if done else 0
                figures |= fan_in(conn)
            return figures
    finally:
        drop_database(name)


def backends(conn: psycopg.Connection[Any]) -> list[int]:
    """The run database's backends and the server's writers (as run.py's drain)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
    ).fetchall()
    return [int(r[0]) for r in rows]


def summary(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    def med(mode: str, key: str) -> float | None:
        values = [r[key] for r in runs[mode] if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    keys = ["seconds", "jobs_per_s", "enqueue_s", "wal_bytes_per_job", "server_cpu_us_per_job"]
    keys += ["others_cores"]
    medians = {mode: {k: med(mode, k) for k in keys} for mode in runs}
    for mode in runs:
        latency = [k for k in (runs[mode] or [{}])[0] if k.startswith(("fanin", "release"))]
        medians[mode] |= {k: med(mode, k) for k in latency}

    def ratio(a: str, b: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k in [*keys[:-1], "fanin_p50_ms", "fanin_p99_ms"]:
            x, y = medians[a].get(k), medians[b].get(k)
            out[k] = round(x / y, 2) if x is not None and y else None
        return out

    ratios = {f"{mode}_to_independent": ratio(mode, "independent") for mode in runs}
    del ratios["independent_to_independent"]
    if "workflows-before" in runs:
        ratios["workflows_to_workflows-before"] = ratio("workflows", "workflows-before")
    return {
        "bench": "workflows",
        "workflows": args.workflows,
        "fan_out": args.fan_out,
        "jobs": args.workflows * (args.fan_out + 1),
        "concurrency": args.concurrency,
        "serves": args.serves,
        "rate": args.rate or None,
        "runs": args.runs,
        "server": os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432"),
        "median": medians,
        "ratios": ratios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--fan-out", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--serves", type=int, default=1)
    parser.add_argument("--enqueue-batch", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="workflows a second (0: burst)")
    parser.add_argument("--quiet", type=float, default=0, help="wait for under CORES busy")
    parser.add_argument("--quiet-wait", type=float, default=600, help="at most SECONDS")
    parser.add_argument(
        "--poel-before",
        metavar="VENV",
        help="also run the workflows with that virtualenv's poel-host (workflows-before)",
    )
    args = parser.parse_args()

    hosts = {"independent": Poel.host, "workflows": Poel.host}
    if args.poel_before:
        hosts["workflows-before"] = str(Path(args.poel_before) / "bin" / "poel-host")
    templates: dict[str, str] = {}  # poel-host -> a database it migrated
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in hosts}
    try:
        for host in dict.fromkeys(hosts.values()):
            templates[host] = scratch_name("wftemplate")
            url = create_database(templates[host])
            # migrate's progress to stderr: stdout is JSON only
            env = {**os.environ, **poel_env(url)}
            subprocess.run([host, "migrate"], env=env, check=True, stdout=sys.stderr)
        for run in range(1, args.runs + 1):
            for mode, host in hosts.items():  # interleaved: drift spreads evenly
                note(f"[workflows] run {run}/{args.runs}: {mode}")
                busy = wait_quiet(args.quiet, args.quiet_wait) if args.quiet else None
                figures = one_run(mode, host, templates[host], args)
                if busy is not None:
                    figures["busy_before_cores"] = round(busy, 2)
                runs[mode].append(figures)
                emit({"bench": "workflows", "mode": mode, "run": run, **figures})
    finally:
        for template in templates.values():
            drop_database(template)
    print(json.dumps(summary(runs, args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
