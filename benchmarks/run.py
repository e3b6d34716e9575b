"""Poel against its peers, on one database server, in one run.

    python benchmarks/run.py drain   [--n 20000] [--concurrency 10,100] [--runs 3]
    python benchmarks/run.py latency [--count 200] [--rate 20]
    python benchmarks/run.py io      [--jobs 1000] [--concurrency 1000]
    python benchmarks/run.py scale   [--n 20000] [--background 10000,1000000]
    python benchmarks/run.py rss     [--n 20000] [--concurrency 1000]
    python benchmarks/run.py cpu     [--cpu-jobs 400] [--cpu-ms 100] [--processes 2]
                                     [--concurrency 1,2,4] (procrastinate's)
    python benchmarks/run.py procdrain [--n 20000] [--processes 2]
    python benchmarks/run.py soak    [--rate 2000] [--duration 600] [--serves 1] [--plot PNG]
                                     (issue 18: a steady producer for a long time; soak.py)
    python benchmarks/run.py wal     [--n 20000] [--concurrency 100] (issue 18: WAL and server
                                     CPU a job; on a server of its own: BENCH_DATABASE_URL)
    python benchmarks/run.py held    [--jobs 1000] [--lease-ms 3000] [--window 15] (issue 18:
                                     rows and WAL a worker writes while it holds long jobs)
    python benchmarks/run.py all     (drain to rss with their defaults, then a table)

--poel-before VENV adds ``poel-before``, Poel from another virtualenv (the code before a
change), next to every Poel configuration, and a table of the ratios poel ÷ poel-before.

Runs are interleaved (run 1 of every system, then run 2 ...) so that a noisy neighbour
on a shared machine hurts every system alike, and medians are reported. Each result is
one JSON line on stdout; the markdown tables follow at the end. See README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import held
import psycopg
import soak
from adapters import System
from adapters.pgqueuer_peer import PgQueuer
from adapters.poel import Poel, PoelBefore, PoelExecutor
from adapters.procrastinate_peer import Procrastinate
from adapters.reference import Reference
from common import (
    BENCH_DIR,
    PREFIX,
    CpuShare,
    Monitor,
    Results,
    ServerCost,
    calibrate,
    create_database,
    drop_database,
    dsn,
    note,
    percentile,
    scratch_name,
    start_process,
    stop_process,
    wait_for,
    wait_quiet,
)

LOGS = Path(tempfile.gettempdir()) / "poel-bench-logs"
SLOW_N = 2000  # --slow-n


# Template databases ---------------------------------------------------------------------


class Templates:
    """One migrated (and optionally pre-filled) database per system family and background
    size, cloned for every run and dropped at the end."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, int], str] = {}

    def get(self, system: System, background: int = 0) -> str:
        key = (system.family, background)
        if key not in self.made:
            name = f"{PREFIX}tpl_{system.family}_{background}"
            note(f"building template {name}")
            url = create_database(name)
            system.install(url)
            if background:
                with psycopg.connect(url, autocommit=True) as conn:
                    system.fill(conn, background // 2, background - background // 2)
                    conn.execute("VACUUM ANALYZE")
            self.made[key] = name
        return self.made[key]

    def drop(self) -> None:
        for name in self.made.values():
            drop_database(name)
        self.made.clear()


# Measurements ---------------------------------------------------------------------------


def run_worker(
    system: System,
    template: str,
    prepare: Callable[[psycopg.Connection[Any]], None],
    body: Callable[[psycopg.Connection[Any], Any, subprocess.Popen[bytes]], dict[str, Any]],
    env: dict[str, str] | None = None,
    kind: str = "noop",
) -> dict[str, Any]:
    """Clone a database, ``prepare`` it, start the worker, run ``body``, clean up.

    Adds the worker's peak RSS and the most connections it held to ``body``'s figures.
    """
    name = scratch_name(system.family)
    url = create_database(name, template)
    LOGS.mkdir(exist_ok=True)
    log = LOGS / f"{system.name}.log"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            since = system.mark(conn)
            prepare(conn)
            argv, worker_env = system.command(url, kind)
            proc = start_process(argv, {**worker_env, **(env or {})}, log)
            monitor = Monitor(proc.pid, name).start()
            try:
                figures = body(conn, since, proc)
                figures["peak_rss_mb"] = monitor.peak_rss_mb()
            except BaseException:
                note(f"worker log {log} (last lines):\n" + _tail(log))
                raise
            finally:
                monitor.stop()
                stop_process(proc)
            figures["max_connections"] = monitor.max_connections
        return figures
    finally:
        drop_database(name)


def drain(
    system: System,
    template: str,
    n: int,
    kind: str = "noop",
    env: dict[str, str] | None = None,
    slow_n: int = SLOW_N,
) -> dict[str, Any]:
    """Time a worker draining ``n`` jobs inserted before it started (``slow_n`` for a
    slow system)."""
    if system.slow and kind == "noop":
        n = min(n, slow_n)

    last_done = -1

    def finished(conn: psycopg.Connection[Any], since: Any) -> bool:
        nonlocal last_done
        done = system.done(conn, since)
        if done == last_done:
            # Stalled since the last poll: look for a failed job (a query that may scan
            # the table, so not on every poll of a drain that is moving).
            error = system.first_error(conn, since)
            if error is not None:
                raise RuntimeError(f"a {kind} job failed, so the run is void: {error}")
        last_done = done
        return done >= n

    def backends(conn: psycopg.Connection[Any]) -> list[int]:
        # The run database's backends (autovacuum's too), and the server's own writers,
        # which write the run's WAL and pages (other sessions' too, when there are any).
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
        ).fetchall()
        return [int(row[0]) for row in rows]

    def body(conn: psycopg.Connection[Any], since: Any, proc: Any) -> dict[str, Any]:
        started = time.monotonic()
        share = CpuShare(proc.pid, lambda: backends(conn)).start()
        partial = False
        try:
            wait_for(
                lambda: finished(conn, since),
                timeout=120 + n / 50,
                what=f"{n} jobs done",
                proc=proc,
                interval=0.25,
            )
        except TimeoutError:
            # A system that slows to a crawl is a result, not an error: report the rate
            # of the jobs it did finish, marked partial.
            partial = True
            note(f"  timed out: {system.done(conn, since)} of {n} jobs done; partial result")
        done = system.done(conn, since) if partial else n
        if not done:
            raise TimeoutError(f"no job done in {time.monotonic() - started:.0f} s")
        cpu = share.stop()
        system.settle(conn)  # what a finished job still costs (Poel's move to its history)
        server = cost[0].stop(done) if cost else {}
        seconds = system.window(conn, since)
        return {
            "jobs": done,
            "partial": partial,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(done / seconds, 1),
            "wall_s": round(time.monotonic() - started, 2),
            **cpu,
            **server,
        }

    cost: list[ServerCost] = []

    def prepare(conn: psycopg.Connection[Any]) -> None:
        cost.append(ServerCost(conn).start())
        system.insert(conn, n, kind)

    return run_worker(system, template, prepare, body, env, kind)


def latency(system: System, template: str, count: int, rate: float) -> dict[str, Any]:
    """Enqueue ``count`` jobs one at a time, ``rate`` a second, to an idle worker; each
    job's handler records when it started. Warm-up jobs first, until the worker answers."""
    stamps = Path(tempfile.mkstemp(prefix="poel-bench-stamps-")[1])

    def lines() -> list[str]:
        return stamps.read_text().splitlines()

    def body(conn: psycopg.Connection[Any], since: Any, proc: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while not lines():  # the worker is up once a job has run
            system.enqueue_stamp(conn, time.time())
            try:
                wait_for(lambda: bool(lines()), 2, "warm-up", proc)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        for _ in range(5):
            system.enqueue_stamp(conn, time.time())
            time.sleep(1 / rate)
        time.sleep(1)
        stamps.write_text("")
        tick = time.monotonic()
        for _ in range(count):
            system.enqueue_stamp(conn, time.time())
            tick += 1 / rate
            time.sleep(max(0.0, tick - time.monotonic()))
        wait_for(lambda: len(lines()) >= count, 30, f"{count} stamps", proc)
        ms = [(float(b) - float(a)) * 1000 for a, b in (line.split() for line in lines())]
        return {
            "jobs": len(ms),
            "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2),
        }

    try:
        return run_worker(
            system, template, lambda c: None, body, {"BENCH_STAMP_FILE": str(stamps)}, "stamp"
        )
    finally:
        stamps.unlink(missing_ok=True)


# Benchmarks -----------------------------------------------------------------------------


def interleave(
    results: Results,
    systems: Sequence[tuple[System, str]],
    runs: int,
    measure: Callable[[System, str], dict[str, Any]],
    label: Callable[[System, str], str] = lambda s, extra: s.config,
    before_run: Callable[[int], None] | None = None,
) -> None:
    """Run 1 of every system, then run 2 ...; a failed run is reported and skipped.

    With --quiet CORES, each run waits first (up to --quiet-wait seconds) until the whole
    machine uses under CORES (other sessions: nothing of ours runs then), and records the
    last figure as ``busy_before_cores``.
    """
    quiet = os.environ.get("BENCH_QUIET_CORES")
    for run in range(1, runs + 1):
        if before_run is not None:
            before_run(run)
        for system, extra in systems:
            note(f"[{results.bench}] run {run}/{runs}: {system.name} {label(system, extra)}")
            busy = None
            if quiet:
                patience = float(os.environ.get("BENCH_QUIET_WAIT_S", "600"))
                busy = round(wait_quiet(float(quiet), patience), 2)
            try:
                figures = measure(system, extra)
                if busy is not None:
                    figures["busy_before_cores"] = busy
            except (RuntimeError, TimeoutError, psycopg.Error) as exc:
                note(f"  failed: {exc}")
                results.rows.setdefault((system.name, label(system, extra)), [])
                continue
            results.add(system.name, label(system, extra), run, figures)


def bench_drain(args: argparse.Namespace, templates: Templates) -> str:
    results = Results("drain", ["jobs_per_s", "seconds", "peak_rss_mb", "max_connections"])
    systems: list[System] = []
    for c in args.concurrency:
        systems += [Poel(c, "warning"), Poel(c, "info"), Procrastinate(c)]
    systems += [Reference(100), Reference(1), PgQueuer(0), PgQueuer(10)]
    drain_each(results, systems, args, templates)
    return results.summarize("jobs_per_s")


def drain_each(
    results: Results, systems: list[System], args: argparse.Namespace, templates: Templates
) -> None:
    """Drain ``--n`` no-op jobs with each of ``systems`` (those --systems selects),
    interleaved, ``--runs`` times."""
    chosen = [(s, "") for s in select(systems, args.systems)]
    interleave(
        results,
        chosen,
        args.runs,
        lambda s, _: drain(s, templates.get(s), args.n, slow_n=args.slow_n),
    )


def bench_wal(args: argparse.Namespace, templates: Templates) -> str:
    """What a job costs the database server (issue 18): WAL bytes and server CPU a job,
    enqueue included, draining ``--n`` no-op jobs, for Poel, pgqueuer and the reference
    loop. Run it against a server nobody else writes to (BENCH_DATABASE_URL): the WAL
    figure is the server's whole."""
    metrics = ["wal_bytes_per_job", "server_cpu_us_per_job", "jobs_per_s"]
    results = Results("wal", metrics)
    systems: list[System] = [Poel(c, "warning") for c in args.concurrency]
    systems += [Reference(100), PgQueuer(0), Procrastinate(args.concurrency[-1])]
    drain_each(results, systems, args, templates)
    return results.summarize("wal_bytes_per_job", higher_is_better=False)


def bench_held(args: argparse.Namespace, templates: Templates) -> str:
    """What one worker holding ``--jobs`` long jobs writes (``held.py``)."""
    systems = select([Poel(args.jobs, "warning")], args.systems)
    return held.bench(args, templates, systems, interleave, run_worker)


def bench_latency(args: argparse.Namespace, templates: Templates) -> str:
    results = Results("latency", ["p50_ms", "p95_ms", "p99_ms", "max_ms"])
    systems: list[System] = [Poel(10, "info"), Poel(10, "warning")]
    systems += [Reference(100), Reference(1), PgQueuer(0), PgQueuer(10), Procrastinate(10)]
    chosen = [(s, "") for s in select(systems, args.systems)]
    interleave(
        results,
        chosen,
        args.runs,
        lambda s, _: latency(s, templates.get(s), args.count, args.rate),
    )
    return results.summarize("p50_ms", higher_is_better=False)


def bench_io(args: argparse.Namespace, templates: Templates) -> str:
    """A thousand jobs each waiting a second on a local HTTP server, at concurrency 1000.

    The reference loops run jobs one after another and pgqueuer's limit-10 variant ten
    at a time: by construction they would take 1000 s and 100 s, so they are left out.
    """
    results = Results("io", ["seconds", "peak_rss_mb", "max_connections", "wall_s"])
    c = args.concurrency[0]
    systems = [Poel(c, "info"), Poel(c, "warning"), PgQueuer(0), Procrastinate(c)]
    systems = select(systems, args.systems)
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(BENCH_DIR / "slowhttp.py"), str(port), "1"])
    env = {"BENCH_HTTP_URL": f"http://127.0.0.1:{port}/"}
    try:
        time.sleep(0.5)

        def floor(run: int) -> None:
            # No queue at all: the same GETs from bare greenlets, what the server and the
            # client stack cost on this machine. Every system's figure includes it.
            argv = [sys.executable, str(BENCH_DIR / "slowhttp.py"), "floor"]
            argv += [env["BENCH_HTTP_URL"], str(args.jobs)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            results.add("floor", f"{args.jobs} gevent GETs, no queue", run, {"seconds": float(out)})

        interleave(
            results,
            [(s, "") for s in systems],
            args.runs,
            lambda s, _: drain(s, templates.get(s), args.jobs, "http", env),
            before_run=floor,
        )
    finally:
        stop_process(server)
    return results.summarize("seconds", higher_is_better=False)


def bench_scale(args: argparse.Namespace, templates: Templates) -> str:
    """Drain throughput with finished and future-scheduled rows already in the table."""
    results = Results("scale", ["jobs_per_s", "seconds"])
    c = args.concurrency[-1]
    systems = [Poel(c, "info"), Reference(100), Reference(1), PgQueuer(0), PgQueuer(10)]
    systems.append(Procrastinate(c))
    chosen = [(s, str(b)) for b in args.background for s in select(systems, args.systems)]

    def label(s: System, background: str) -> str:
        return f"{s.config} rows={_human(int(background))}"

    interleave(
        results,
        chosen,
        args.runs,
        lambda s, b: drain(s, templates.get(s, int(b)), args.n, slow_n=args.slow_n),
        label,
    )
    table = results.summarize("jobs_per_s", group=lambda config: config.rsplit("rows=")[-1])
    medians = results.medians()
    small, large = _human(args.background[0]), _human(args.background[-1])
    lines = ["", f"Throughput at {large} rows ÷ at {small} rows (same system):", ""]
    lines += ["| system | config | ratio |", "|---|---|---:|"]
    for (system, config), values in medians.items():
        if config.endswith(f"rows={small}"):
            other = medians.get((system, config.replace(f"rows={small}", f"rows={large}")))
            if other and other["jobs_per_s"] and values["jobs_per_s"]:
                ratio = other["jobs_per_s"] / values["jobs_per_s"]
                lines.append(f"| {system} | {config.rsplit(' ', 1)[0]} | {ratio:.2f}x |")
    return table + "\n".join(lines) + "\n"


def bench_rss(args: argparse.Namespace, templates: Templates) -> str:
    """Peak RSS draining no-op jobs at concurrency 1000 (every slot in use)."""
    results = Results("rss", ["peak_rss_mb", "jobs_per_s", "max_connections"])
    c = args.concurrency[0]
    systems = select([Poel(c, "info"), PgQueuer(0), Procrastinate(c), Reference(100)], args.systems)
    interleave(
        results,
        [(s, "") for s in systems],
        args.runs,
        lambda s, _: drain(s, templates.get(s), args.n, slow_n=args.slow_n),
    )
    return results.summarize("peak_rss_mb", higher_is_better=False)


def bench_cpu(args: argparse.Namespace, templates: Templates) -> str:
    """``--cpu-jobs`` jobs of ``--cpu-ms`` of pure-Python CPU each: Poel on its process
    executor (``--processes`` children), for context on its greenlet and thread executors,
    and procrastinate running the same loop as a sync task at each ``--concurrency``.

    The loop is calibrated here once; every job records the CPU its loop really took
    (``time.thread_time()``), so each run's ideal wall time is its own measured CPU ÷ the
    cores this process may use, not an assumption. ``vs_ideal`` is the run's wall time
    (first start to last finish, from the database) ÷ that ideal.
    """
    cores = len(os.sched_getaffinity(0))
    loops = calibrate(args.cpu_ms / 1000)
    note(f"[cpu] {loops:,} loops of the CPU job ~ {args.cpu_ms:g} ms of CPU here; {cores} cores")
    metrics = ["seconds", "vs_ideal", "ideal_s", "cpu_ms_per_job", "others_cores", "peak_rss_mb"]
    results = Results("cpu", metrics)
    systems: list[System] = []
    for executor in args.executors:
        if executor == "process":
            systems += [PoelExecutor("process", processes=p) for p in args.processes]
        else:
            systems.append(PoelExecutor(executor))
    systems += [Procrastinate(c) for c in args.concurrency]
    chosen = [(s, "") for s in select(systems, args.systems)]

    def measure(system: System, _: str) -> dict[str, Any]:
        used_file = Path(tempfile.mkstemp(prefix="poel-bench-cpu-")[1])
        env = {"BENCH_CPU_LOOPS": str(loops), "BENCH_CPU_FILE": str(used_file)}
        load = os.getloadavg()[0]
        try:
            figures = drain(system, templates.get(system), args.cpu_jobs, "cpu", env)
            used = [float(line) for line in used_file.read_text().split()]
        finally:
            used_file.unlink(missing_ok=True)
        ideal = sum(used) / cores
        return figures | {
            "cpu_jobs_recorded": len(used),
            "cpu_total_s": round(sum(used), 3),
            "cpu_ms_per_job": round(1000 * sum(used) / max(len(used), 1), 2),
            "ideal_s": round(ideal, 3),
            "vs_ideal": round(figures["seconds"] / ideal, 3) if ideal else None,
            "cores": cores,
            "loops": loops,
            "load1": load,
            "load1_after": os.getloadavg()[0],
        }

    interleave(results, chosen, args.runs, measure)
    table = results.summarize("seconds", higher_is_better=False)
    medians = results.medians()
    poel = [k for k in medians if k[0] == "poel" and medians[k]["seconds"]]
    peers = [k for k in medians if k[0] != "poel" and medians[k]["seconds"]]
    lines = ["", "Speed-up, peer's median `seconds` ÷ Poel's (higher is better for Poel):", ""]
    lines += ["| peer | " + " | ".join(c for _, c in poel) + " |", "|---|" + "---:|" * len(poel)]
    for peer in sorted(peers, key=lambda k: medians[k]["seconds"] or 0):
        cells = [_ratio(medians[peer]["seconds"], medians[p]["seconds"]) for p in poel]
        lines.append(f"| {peer[0]} {peer[1]} | " + " | ".join(cells) + " |")
    return table + "\n".join(lines) + "\n"


def bench_procdrain(args: argparse.Namespace, templates: Templates) -> str:
    """Drain ``--n`` no-op jobs on the process executor (``--processes`` children): the
    executor's own cost per job (a claim, a round trip to a child, a completion), beside
    the same no-op jobs on greenlets (WORKER_CONCURRENCY=10, the default) in the same run."""
    metrics = ["jobs_per_s", "seconds", "us_per_job_per_child", "others_cores", "peak_rss_mb"]
    results = Results("procdrain", metrics)
    systems = [PoelExecutor("process", processes=p) for p in args.processes]
    systems.append(PoelExecutor("greenlet"))
    chosen = [(s, "") for s in select(list(systems), args.systems)]
    slots = {s.config: s.processes if s.executor == "process" else s.concurrency for s in systems}

    def measure(system: System, _: str) -> dict[str, Any]:
        load = os.getloadavg()[0]
        figures = drain(system, templates.get(system), args.n)
        per_job = 1e6 * (slots[system.config] or 1) / figures["jobs_per_s"]
        return figures | {
            "us_per_job_per_child": round(per_job, 1),
            "load1": load,
            "load1_after": os.getloadavg()[0],
        }

    interleave(results, chosen, args.runs, measure)
    table = results.summarize("jobs_per_s")
    medians = results.medians()
    base = medians.get(("poel", PoelExecutor("greenlet").config))
    lines = ["", "Process executor ÷ greenlet executor (same run), median `jobs_per_s`:", ""]
    lines += ["| config | ratio |", "|---|---:|"]
    for (_, config), values in medians.items():
        if "executor=process" in config and base:
            ratio = _ratio(values["jobs_per_s"], base["jobs_per_s"])
            lines.append(f"| {config} | {ratio} |")
    return table + "\n".join(lines) + "\n"


def bench_soak(args: argparse.Namespace, templates: Templates) -> str:
    """A producer at ``--rate`` for ``--duration`` s against ``--serves`` serves, on a
    server with production defaults, sampled for drift (``soak.py``; no templates: one
    database, made and dropped by the soak)."""
    if args.poel_before:
        raise SystemExit("soak runs one Poel: --poel VENV runs another virtualenv's")
    if args.quiet is not None:
        note(f"[soak] machine busy before: {wait_quiet(args.quiet, args.quiet_wait):.2f} cores")
    return soak.bench(args)


# Machine description --------------------------------------------------------------------


def machine() -> str:
    """The facts a reader needs to compare these figures with theirs."""
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings"
            " WHERE name IN ('synchronous_commit', 'shared_buffers', 'max_connections', 'fsync')"
        ).fetchone()
    packages = [
        "poel-host",
        "pgqueuer",
        "asyncpg",
        "procrastinate",
        "psycopg",
        "psycopg-pool",
        "gevent",
    ]
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    lines = [
        f"- CPU: {os.cpu_count()} x {cpu} (`nproc` = {len(os.sched_getaffinity(0))})",
        f"- memory: {mem_kb / 1024 / 1024:.1f} GiB; {platform.platform()}",
        f"- PostgreSQL {version[0] if version else '?'} on the same machine"
        f" ({settings[0] if settings else ''})",
        f"- Python {platform.python_version()}; {versions}",
    ]
    if os.environ.get("BENCH_POEL_BEFORE"):
        lines.append(f"- poel-before: the poel-host in `{os.environ['BENCH_POEL_BEFORE']}`")
    return "\n".join(lines)


# Command line ---------------------------------------------------------------------------

BENCHES: dict[str, Callable[[argparse.Namespace, Templates], str]] = {
    "drain": bench_drain,
    "latency": bench_latency,
    "io": bench_io,
    "scale": bench_scale,
    "rss": bench_rss,
    "cpu": bench_cpu,
    "procdrain": bench_procdrain,
    "soak": bench_soak,
    "wal": bench_wal,
    "held": bench_held,
}
ALL = ["drain", "latency", "io", "scale", "rss"]  # what `all` runs (the issue 5 suite)
DEFAULT_CONCURRENCY = {
    "drain": [10, 100],
    "scale": [100],
    "io": [1000],
    "rss": [1000],
    "cpu": [1, 2, 4],  # procrastinate's concurrency: it runs sync tasks on that many threads
    "soak": [100],
    "wal": [100],
}
DEFAULT_RATE = {"latency": 20.0, "soak": 2000.0}  # jobs a second


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", choices=[*BENCHES, "all", "machine"])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--n", type=int, default=20_000, help="jobs to drain")
    parser.add_argument("--concurrency", type=_ints, help="e.g. 10,100")
    parser.add_argument("--count", type=int, default=200, help="latency: jobs measured")
    parser.add_argument(
        "--rate", type=float, help="latency (default 20), soak (2000): jobs a second"
    )
    parser.add_argument("--jobs", type=int, default=1000, help="io: one-second jobs; held: jobs")
    parser.add_argument("--window", type=float, default=15, help="held: seconds watched")
    parser.add_argument("--background", type=_ints, default=[10_000, 1_000_000])
    parser.add_argument("--slow-n", type=int, default=SLOW_N, help="jobs for slow systems")
    parser.add_argument("--cpu-jobs", type=int, default=400, help="cpu: jobs")
    parser.add_argument("--cpu-ms", type=float, default=100, help="cpu: CPU per job, ms")
    parser.add_argument(
        "--processes", type=_ints, default=[2], help="cpu, procdrain: POEL_PROCESSES, e.g. 2"
    )
    parser.add_argument(
        "--executors",
        type=lambda text: text.split(","),
        default=["process", "greenlet", "thread"],
        help="cpu: Poel's executors to run",
    )
    parser.add_argument("--systems", help="only these, e.g. poel,pgqueuer (prefix match)")
    parser.add_argument(
        "--poel-before",
        metavar="VENV",
        default=os.environ.get("BENCH_POEL_BEFORE"),
        help="a virtualenv with poel-host and poel-bench (e.g. the code before a change):"
        " adds poel-before beside each Poel configuration",
    )
    parser.add_argument(
        "--before-first",
        action="store_true",
        help="with --poel-before, run poel-before first in each pair (an order check)",
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="off shows CPU cost where a slow disk's fsync would hide it",
    )
    parser.add_argument(
        "--quiet",
        metavar="CORES",
        type=float,
        help="before each run, wait until the machine uses under CORES (e.g. 0.3)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=600, help="--quiet: at most this many s a run"
    )
    soak.add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ["BENCH_SYNCHRONOUS_COMMIT"] = args.synchronous_commit
    if args.quiet is not None:
        os.environ["BENCH_QUIET_CORES"] = str(args.quiet)
        os.environ["BENCH_QUIET_WAIT_S"] = str(args.quiet_wait)
    if args.poel_before:
        if not (Path(args.poel_before) / "bin" / "poel-host").is_file():
            parser.error(f"--poel-before: no {args.poel_before}/bin/poel-host")
        os.environ["BENCH_POEL_BEFORE"] = args.poel_before
        os.environ["BENCH_BEFORE_FIRST"] = "1" if args.before_first else ""
    if args.bench == "machine":
        print(machine())
        return 0
    names = ALL if args.bench == "all" else [args.bench]
    templates = Templates()
    tables = []
    try:
        for name in names:
            ns = argparse.Namespace(**vars(args))
            if args.concurrency is None:
                ns.concurrency = DEFAULT_CONCURRENCY.get(name, [10])
            if args.rate is None:
                ns.rate = DEFAULT_RATE.get(name, 20.0)
            tables.append(BENCHES[name](ns, templates))
    finally:
        templates.drop()
    print()
    if args.bench != "soak":  # the soak describes its own server (not this one)
        print(machine())
        print()
    print("\n".join(tables))
    return 0


def select(systems: list[System], wanted: str | None) -> list[System]:
    """``systems`` whose names start with one of the prefixes in ``wanted``; with
    --poel-before, each Poel is followed by its poel-before twin (same configuration),
    so that the two run one after the other in every round (the twin first with
    --before-first)."""
    before = os.environ.get("BENCH_POEL_BEFORE")
    if before:
        first = os.environ.get("BENCH_BEFORE_FIRST") == "1"  # to rule out an order effect
        twins = [
            [s, PoelBefore(before, s.concurrency or 10, s.log)] if type(s) is Poel else [s]
            for s in systems
        ]
        if first:
            twins = [pair[::-1] for pair in twins]
        systems = [s for pair in twins for s in pair]
    if not wanted:
        return systems
    prefixes = wanted.split(",")
    return [s for s in systems if any(s.name.startswith(p) for p in prefixes)]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def _human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    sys.exit(main())
