"""What every benchmark shares: databases, worker processes, timing, medians, output.

Every system is measured the same way: a fresh database cloned from that system's
template (schema installed, background rows already there), jobs inserted before the
worker starts, the worker run as its own process, and the elapsed time read from the
timestamps the system itself writes in the database (first start to last finish), so
that start-up, imports and shutdown are not counted for anyone.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432")
PREFIX = "poel_bench_"


def dsn(database: str) -> str:
    """The URL of ``database`` on the benchmark server."""
    return f"{SERVER.rstrip('/')}/{database}"


def admin() -> psycopg.Connection[Any]:
    """An autocommit connection to the maintenance database, for CREATE/DROP DATABASE."""
    return psycopg.connect(dsn("postgres"), autocommit=True)


def create_database(name: str, template: str | None = None) -> str:
    """Create ``name`` (a clone of ``template`` if given) and return its URL.

    Cloning a template copies files instead of replaying a million inserts, so every run
    starts from the same table without paying for it again.
    """
    assert name.startswith(PREFIX), name
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
        commit = os.environ.get("BENCH_SYNCHRONOUS_COMMIT", "on")
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {commit}')
    return dsn(name)


def drop_database(name: str) -> None:
    """Drop a benchmark database (only ours: the prefix is checked)."""
    assert name.startswith(PREFIX), name
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_exists(name: str) -> bool:
    with admin() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


def scratch_name(label: str) -> str:
    """A unique database name for one run."""
    return f"{PREFIX}{label}_{uuid.uuid4().hex[:8]}"


# Worker processes -----------------------------------------------------------------------


@dataclass
class Monitor:
    """Samples a worker process while it runs: peak RSS and database connections.

    VmHWM is the kernel's own high-water mark, so sampling cannot miss the peak; the
    connection count is sampled (every 50 ms) from pg_stat_activity.
    """

    pid: int
    database: str
    max_connections: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
            while not self._stop.wait(0.05):
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'",
                    [self.database],
                ).fetchone()
                self.max_connections = max(self.max_connections, count[0] if count else 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the process, in MiB (None once it has exited)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of every CPU since boot, in clock ticks (/proc/stat; idle
    and iowait are idle)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def process_jiffies(pid: int, reaped: bool = True) -> int:
    """CPU ticks of ``pid`` (user + system), plus with ``reaped`` those of its children it
    has waited for; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return sum(int(f) for f in fields[11 : 15 if reaped else 13])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (``/proc/PID/task/TID/children``, recursively)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


@dataclass
class CpuShare:
    """How much CPU the machine spent during a run, and how much of it was not the run's.

    The run's own CPU is the worker's process tree (its children too, reaped ones through
    the worker's own accounting), the PostgreSQL processes ``backends()`` names (the run
    database's, the server's WAL writer, checkpointer and background writer) and this
    harness; the rest of the machine's busy time is other sessions' (a neighbour's test
    suite), as cores' worth over the window: the figure that says whether a run was quiet.
    It also holds the kernel's own work for the run (its fsyncs, its page cache), so it is
    not quite zero even on an idle machine.
    """

    pid: int
    backends: Callable[[], list[int]]
    _start: float = 0.0
    _machine: tuple[int, int] = (0, 0)
    _ours: dict[int, int] = field(default_factory=dict)

    def _sample(self) -> dict[int, int]:
        pids = [self.pid, *descendants(self.pid), *self.backends()]
        ours = {p: process_jiffies(p) for p in pids}
        ours[os.getpid()] = process_jiffies(os.getpid(), reaped=False)
        return ours

    def start(self) -> CpuShare:
        self._start = time.monotonic()
        self._ours = self._sample()
        self._machine = machine_jiffies()
        return self

    def stop(self) -> dict[str, float]:
        ours = self._sample()
        busy, _total = machine_jiffies()
        seconds = time.monotonic() - self._start
        used = sum(ticks - self._ours.get(p, 0) for p, ticks in ours.items())
        machine = busy - self._machine[0]
        return {
            "machine_cores": round(machine / CLK_TCK / seconds, 2),
            "run_cores": round(used / CLK_TCK / seconds, 2),
            "others_cores": round(max(0, machine - used) / CLK_TCK / seconds, 2),
        }


@dataclass
class ServerCost:
    """What a run cost the database server: the WAL it wrote and the CPU its processes
    spent, from ``start`` (before the jobs are inserted: enqueueing is part of a job's
    life) to ``stop`` (once the last job is done, before the worker stops, while its
    backends still exist to be read).

    The WAL is the server's whole (``pg_current_wal_lsn``), so run it on a server nobody
    else writes to (``BENCH_DATABASE_URL``); the CPU is the run database's backends, its
    autovacuum workers included, and the WAL writer, checkpointer and background writer.
    """

    conn: psycopg.Connection[Any]
    _lsn: str = "0/0"
    _ticks: dict[int, int] = field(default_factory=dict)

    def _backends(self) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
        ).fetchall()
        return {int(r[0]): process_jiffies(int(r[0]), reaped=False) for r in rows}

    def start(self) -> ServerCost:
        row = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        self._lsn = str(row[0]) if row else "0/0"
        self._ticks = self._backends()
        return self

    def stop(self, jobs: int) -> dict[str, float]:
        ticks = self._backends()
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", [self._lsn]
        ).fetchone()
        wal = int(row[0]) if row else 0
        cpu = sum(t - self._ticks.get(pid, 0) for pid, t in ticks.items()) / CLK_TCK
        return {
            "wal_bytes_per_job": round(wal / max(jobs, 1), 1),
            "server_cpu_us_per_job": round(cpu * 1e6 / max(jobs, 1), 1),
        }


def busy_cores(seconds: float) -> float:
    """Cores' worth of CPU the whole machine used over the next ``seconds``."""
    busy, _ = machine_jiffies()
    time.sleep(seconds)
    return (machine_jiffies()[0] - busy) / CLK_TCK / seconds


def wait_quiet(cores: float, patience_s: float, sample_s: float = 5.0) -> float:
    """Between runs (nothing of ours running): wait until the machine uses under ``cores``
    over ``sample_s``, for at most ``patience_s``; the last figure (run anyway after)."""
    deadline = time.monotonic() + patience_s
    while True:
        used = busy_cores(sample_s)
        if used < cores or time.monotonic() > deadline:
            return used
        note(f"  waiting for a quiet machine: {used:.2f} cores busy, load {os.getloadavg()[0]:.2f}")


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a worker with its output in ``log`` (a pipe nobody reads would block it)."""
    out = log.open("wb")
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=out)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(
    predicate: Any, timeout: float, what: str, proc: Any = None, interval: float = 0.05
) -> None:
    """Poll ``predicate()`` every ``interval`` seconds; fail loudly on timeout or a dead
    worker (a crashed worker would otherwise look like a slow one)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# Statistics and output ------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile by linear interpolation (as numpy's default does)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def emit(record: dict[str, Any]) -> None:
    """One JSON line per result on stdout, flushed so a long run can be followed."""
    print(json.dumps(record, default=str), flush=True)


def note(message: str) -> None:
    """Progress for humans, on stderr so stdout stays JSON lines and the table."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Results:
    """Every run's measurements, grouped by (system, config) for medians."""

    bench: str
    metrics: list[str]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, system: str, config: str, run: int, values: dict[str, Any]) -> None:
        self.rows.setdefault((system, config), []).append(values)
        emit({"bench": self.bench, "system": system, "config": config, "run": run, **values})

    def medians(self) -> dict[tuple[str, str], dict[str, float | None]]:
        return {
            key: {m: median(r.get(m) for r in runs) for m in self.metrics}
            for key, runs in self.rows.items()
        }

    def summarize(
        self,
        headline: str,
        higher_is_better: bool = True,
        group: Callable[[str], str] = lambda config: "",
    ) -> str:
        """Emit one JSON summary line per (system, config) and return the markdown tables.

        The second table divides each Poel configuration's median by each peer's, the
        figure the issue's targets are stated in; only configurations in the same
        ``group`` (e.g. the same table size) are compared.
        """
        medians = self.medians()
        for (system, config), values in medians.items():
            runs = len(self.rows[(system, config)])
            emit(
                {"bench": self.bench, "summary": "median", "system": system, "config": config}
                | {"runs": runs}
                | values
            )
        lines = [
            f"### {self.bench}",
            "",
            "| system | config | runs | " + " | ".join(self.metrics) + " |",
            "|---|---|---:|" + "---:|" * len(self.metrics),
        ]
        for (system, config), values in medians.items():
            cells = [_fmt(values[m]) for m in self.metrics]
            runs = len(self.rows[(system, config)])
            lines.append(f"| {system} | {config} | {runs} | " + " | ".join(cells) + " |")
        poel = [k for k in medians if k[0] == "poel"]
        peers = [k for k in medians if not k[0].startswith("poel")]
        if poel and peers:
            better = "higher" if higher_is_better else "lower"
            lines += [
                "",
                f"Poel ÷ peer, median `{headline}` ({better} is better for Poel):",
                "",
                "| peer | " + " | ".join(f"{s} {c}" for s, c in poel) + " |",
                "|---|" + "---:|" * len(poel),
            ]
            for peer in peers:
                cells = [
                    _ratio(medians[p][headline], medians[peer][headline])
                    if group(p[1]) == group(peer[1])
                    else ""
                    for p in poel
                ]
                lines.append(f"| {peer[0]} {peer[1]} | " + " | ".join(cells) + " |")
        pairs = [(p, ("poel-before", p[1])) for p in poel if ("poel-before", p[1]) in medians]
        if pairs:
            lines += [
                "",
                "poel ÷ poel-before (the change's effect), medians of the same configuration:",
                "",
                "| config | " + " | ".join(self.metrics) + " |",
                "|---|" + "---:|" * len(self.metrics),
            ]
            for after, before in pairs:
                cells = [_ratio(medians[after][m], medians[before][m]) for m in self.metrics]
                lines.append(f"| {after[1]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def write_stamp(enqueued: float) -> None:
    """Record that a job enqueued at wall-clock ``enqueued`` starts now.

    Peers' handlers call this; Poel's plugin has its own copy (it is an installed
    distribution and cannot import this module). One line per job, appended.
    """
    started = time.time()
    with open(os.environ["BENCH_STAMP_FILE"], "a") as out:
        out.write(f"{enqueued!r} {started!r}\n")


async def http_get(url: str) -> None:
    """A minimal HTTP/1.0 GET on asyncio streams, for the asyncio peers' I/O job (no
    client library to install, and no connection pool limiting the concurrency)."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
    await writer.drain()
    await reader.read()
    writer.close()
    await writer.wait_closed()


# The CPU job -----------------------------------------------------------------------------


def spin(loops: int) -> int:
    """The ``cpu`` benchmark's pure-Python loop: the same as ``poel_bench.cpu.spin`` (keep
    the two identical; Poel's plugin is an installed distribution with its own copy)."""
    x = 0
    for i in range(loops):
        x = (x * 31 + i) % 1_000_003
    return x


def cpu_job() -> None:
    """The peers' CPU job: spin ``$BENCH_CPU_LOOPS`` times and append the loop's own CPU
    seconds (this thread's) to ``$BENCH_CPU_FILE``, as Poel's ``bench.cpu`` does."""
    loops = int(os.environ["BENCH_CPU_LOOPS"])
    start = time.thread_time()
    spin(loops)
    used = time.thread_time() - start
    with open(os.environ["BENCH_CPU_FILE"], "a") as out:
        out.write(f"{used!r}\n")


def calibrate(target_s: float, trials: int = 5) -> int:
    """Loops of ``spin`` that take ``target_s`` of CPU here: a short probe for an estimate,
    then ``trials`` runs of that size, rescaled by their median."""
    probe = 200_000
    start = time.thread_time()
    spin(probe)
    loops = max(1, round(probe * target_s / max(time.thread_time() - start, 1e-9)))
    took = []
    for _ in range(trials):
        start = time.thread_time()
        spin(loops)
        took.append(time.thread_time() - start)
    return max(1, round(loops * target_s / statistics.median(took)))
