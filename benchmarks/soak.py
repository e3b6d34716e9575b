"""A soak: Poel under a steady producer for a long time, sampled for drift (issue 18).

    python benchmarks/soak.py [--rate 2000] [--duration 600] [--serves 1] [--concurrency 100]
                              [--sample-every 5] [--server URL] [--plot /tmp/soak.png]
                              [--retain-succeeded-hours 0.05] [--poel VENV]
    python benchmarks/run.py soak ...   (the same, from the benchmark suite's command line)

Every other benchmark drains a burst and stops; a production queue runs for months at a
steady rate, and that is where a PostgreSQL queue drifts: table and index bloat,
autovacuum falling behind, retained rows piling up. This runs ``--serves`` real
``poel-host serve`` processes (the ``poel-bench`` plugin, ``bench.noop`` jobs) on a fresh
``poel_bench_soak_*`` database, and a producer process that inserts ``--rate`` jobs a
second on a fixed schedule (every ``--tick-ms``, one multi-row INSERT of what is due),
for ``--duration`` seconds. Every ``--sample-every`` seconds it prints one JSON line:

- ``enqueued``, ``done``, ``queued`` (the backlog: due, not yet claimed), ``running``;
- ``p50_ms``, ``p99_ms``, ``max_ms``: enqueue-to-start (the jobs' ``started_at -
  created_at``, the server's clock) of the jobs started in the window, from a histogram
  of 1% buckets (so to 1%);
- ``table_bytes`` (``pg_table_size``), ``indexes_bytes`` and each index's size;
- ``n_live_tup``, ``n_dead_tup``, ``autovacuum_count``, ``autoanalyze_count``,
  ``n_tup_hot_upd`` of the jobs table, and whether a vacuum of it is running;
- ``wal_bytes`` (since the start, ``pg_current_wal_lsn``) and the window's WAL per job;
- CPU per job done in the window of the whole PostgreSQL server (the postmaster and
  every process below it, exited autovacuum workers included through the postmaster's
  reaped-children time; the sampler's own backend left out) and of the serves; the
  machine's busy cores and ``others_cores``, what other sessions used (a shared machine);
- the producer's lag: how late its latest INSERT started, the worst in the window, and
  the jobs it is behind its schedule. A producer that cannot keep up is reported, never
  hidden: it never skips what is due, it inserts it late.

At the end: a summary (JSON, then markdown): p50 and p99 of the first ``--compare-s``
seconds of the run against the last (default: a tenth of the run each), storage at the
start, the end and its peak and its growth over that last stretch, WAL and CPU per job
over the whole run, dead tuples and autovacuum runs, and whether the producer kept up.
``--plot PATH`` draws the time series as a PNG (matplotlib): a person reads drift from a
picture.

The server should have production defaults (autovacuum on): by default the
``15/campaign`` cluster on port 5433 (``--cluster 15/campaign`` starts it when it is down
and stops it after). The run says when autovacuum is off. CPU figures need the server on
this machine (``/proc``); they are null otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import common
import psycopg
from adapters.poel import Poel, PoelBefore
from common import (
    CLK_TCK,
    create_database,
    descendants,
    drop_database,
    emit,
    machine_jiffies,
    note,
    process_jiffies,
    scratch_name,
    start_process,
    stop_process,
    wait_for,
)

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5433"
LOGS = Path("/tmp/poel-bench-logs")
BUCKET = math.log(1.01)  # latency histogram: 1% buckets
LAG_S = 1.0  # a window ends this long before its sample: claims still committing land in it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's own options (``--rate`` and ``--concurrency`` are the caller's: run.py
    shares them with other benchmarks)."""
    group = parser.add_argument_group("soak")
    group.add_argument("--duration", type=float, default=600, help="soak: seconds of load")
    group.add_argument("--serves", type=int, default=1, help="soak: poel-host serve processes")
    group.add_argument("--sample-every", type=float, default=5, help="soak: seconds a sample")
    group.add_argument("--tick-ms", type=float, default=50, help="soak: producer INSERT period")
    group.add_argument(
        "--server",
        help="soak: the PostgreSQL server URL (a database in it is ignored); default"
        f" $BENCH_DATABASE_URL, else {DEFAULT_SERVER}",
    )
    group.add_argument(
        "--cluster",
        metavar="VERSION/NAME",
        help="soak: start this pg_ctlcluster cluster if it is down (and stop it after)",
    )
    group.add_argument("--plot", type=Path, help="soak: draw the time series to this PNG")
    group.add_argument(
        "--compare-s",
        type=float,
        help="soak: the summary compares the first and the last so many seconds"
        " (default: a tenth of the run)",
    )
    group.add_argument(
        "--retain-succeeded-hours",
        type=float,
        help="soak: POEL_RETAIN_SUCCEEDED_HOURS for serve (fractions: 0.05 is 3 minutes)",
    )
    group.add_argument(
        "--lease-ms", type=int, help="soak, held (default 3000): POEL_LEASE_MS for serve"
    )
    group.add_argument(
        "--serve-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="soak: more environment for serve (repeatable)",
    )
    group.add_argument("--log", default="warning", help="soak: serve's POEL_LOG_LEVEL")
    group.add_argument(
        "--poel",
        metavar="VENV",
        help="soak: run this virtualenv's poel-host (with poel-bench), e.g. main before a change",
    )
    group.add_argument(
        "--keep-database", action="store_true", help="soak: do not drop the database after"
    )


@dataclass
class Options:
    rate: float = 2000
    duration: float = 600
    serves: int = 1
    concurrency: int = 100
    sample_every: float = 5
    tick_ms: float = 50
    server: str = DEFAULT_SERVER
    cluster: str | None = None
    plot: Path | None = None
    serve_env: dict[str, str] = field(default_factory=dict)
    log: str = "warning"
    poel: str | None = None
    keep_database: bool = False
    compare_s: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        concurrency = args.concurrency
        if isinstance(concurrency, list):  # run.py's --concurrency is a list
            concurrency = concurrency[0]
        if args.rate <= 0 or args.duration <= 0 or args.serves < 1:
            raise SystemExit("--rate and --duration must be positive, --serves at least 1")
        if args.sample_every < 2 * LAG_S:
            # A window's floor (below which every job had started) is the one found two
            # samples before, which holds only if a sample period is longer than LAG_S.
            raise SystemExit(f"--sample-every: at least {2 * LAG_S:g} s")
        env = {}
        for item in args.serve_env:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--serve-env {item!r}: expected NAME=VALUE")
            env[name] = value
        if args.retain_succeeded_hours is not None:
            # A job pruned before the sample after its start would be missing from the
            # latency windows (they look back two samples).
            if args.retain_succeeded_hours * 3600 < 3 * args.sample_every + 2 * LAG_S:
                raise SystemExit("--retain-succeeded-hours: shorter than three samples")
            env["POEL_RETAIN_SUCCEEDED_HOURS"] = repr(args.retain_succeeded_hours)
        if args.lease_ms is not None:
            env["POEL_LEASE_MS"] = str(args.lease_ms)
        if args.poel and not (Path(args.poel) / "bin" / "poel-host").is_file():
            raise SystemExit(f"--poel: no {args.poel}/bin/poel-host")
        return cls(
            rate=args.rate,
            duration=args.duration,
            serves=args.serves,
            concurrency=concurrency,
            sample_every=args.sample_every,
            tick_ms=args.tick_ms,
            server=server_url(args.server),
            cluster=args.cluster,
            plot=args.plot,
            compare_s=args.compare_s,
            serve_env=env,
            log=args.log,
            poel=args.poel,
            keep_database=args.keep_database,
        )


def server_url(given: str | None) -> str:
    """The server part of a URL (``common.dsn`` appends the database)."""
    url = given or os.environ.get("BENCH_DATABASE_URL") or DEFAULT_SERVER
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))


# The cluster ----------------------------------------------------------------------------


def ensure_cluster(cluster: str) -> bool:
    """Start ``VERSION/NAME`` with pg_ctlcluster if it is down; True if we started it."""
    version, name = cluster.split("/")
    status = subprocess.run(
        ["pg_ctlcluster", version, name, "status"], capture_output=True, check=False
    )
    if status.returncode == 0:
        return False
    note(f"[soak] starting cluster {cluster}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], check=True
    )
    return True


def stop_cluster(cluster: str) -> None:
    version, name = cluster.split("/")
    note(f"[soak] stopping cluster {cluster}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop"], check=False
    )


# The producer ---------------------------------------------------------------------------

# Shared with the sampler (a multiprocessing.Array of doubles):
INSERTED, STATEMENTS, LAG_NOW, LAG_MAX_WINDOW, LAG_MAX, BEHIND = range(6)


def produce(url: str, rate: float, duration: float, tick_s: float, stats: Any) -> None:
    """Insert ``rate`` jobs a second for ``duration`` s: at tick k (every ``tick_s``), one
    INSERT of every job due by the end of that tick not inserted yet. A late tick (the
    previous INSERT took too long) inserts what it missed, so the rate holds if it can;
    the lag (how late the oldest job an INSERT carries is) and the jobs behind schedule
    are recorded, for the sampler to report."""
    poel = Poel()
    inserted = 0
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.monotonic()
        k = 0
        while True:
            scheduled = start + k * tick_s
            if k * tick_s >= duration:
                break
            now = time.monotonic()
            if now < scheduled:
                time.sleep(scheduled - now)
                now = time.monotonic()
            # How late the oldest job not inserted yet is: 0 on schedule, growing when
            # INSERTs take longer than a tick.
            lag = max(0.0, now - start - inserted / rate)
            # Everything due by now (a late tick catches up), at most the run's total.
            elapsed = min(now - start + tick_s, duration)
            due = min(round(rate * elapsed), round(rate * duration)) - inserted
            if due > 0:
                poel.insert(conn, due, "noop")
                inserted += due
            with stats.get_lock():
                stats[INSERTED] = inserted
                stats[STATEMENTS] += 1
                stats[LAG_NOW] = lag
                stats[LAG_MAX_WINDOW] = max(stats[LAG_MAX_WINDOW], lag)
                stats[LAG_MAX] = max(stats[LAG_MAX], lag)
                stats[BEHIND] = max(0.0, rate * min(time.monotonic() - start, duration) - inserted)
            # The next tick not yet past (ticks missed while late are folded into this one).
            k = max(k + 1, math.floor((time.monotonic() - start) / tick_s))


# Sampling -------------------------------------------------------------------------------

# The jobs table, its indexes, and the history of finished jobs (migration 0013: every
# partition, with its indexes; 0 on a Poel without one).
SIZES = """
SELECT pg_table_size(t.oid), pg_indexes_size(t.oid),
       coalesce((SELECT jsonb_object_agg(c.relname, pg_relation_size(c.oid))
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = t.oid), '{}'::jsonb),
       coalesce((SELECT sum(pg_total_relation_size(p.relid))
                 FROM pg_partition_tree(to_regclass('poel.jobs_history')) AS p
                 WHERE p.isleaf), 0)::bigint
FROM pg_class t WHERE t.oid = 'poel.jobs'::regclass
"""

TABLE_STATS = """
SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, n_tup_upd,
       n_tup_hot_upd, n_tup_del,
       EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v WHERE v.relid = s.relid)
FROM pg_stat_user_tables s WHERE s.relid = 'poel.jobs'::regclass
"""

# Counts through the partial indexes (one each), never a scan of the finished rows. The
# failed jobs of a Poel with a history (migration 0013) are also in its dead letter.
COUNTS = """
SELECT now(), pg_wal_lsn_diff(pg_current_wal_lsn(), %(wal0)s::pg_lsn)::bigint,
       coalesce((SELECT max(id) FROM poel.jobs), 0),
       (SELECT count(*) FROM poel.jobs WHERE state = 'queued'),
       (SELECT count(*) FROM poel.jobs WHERE state = 'running'),
       (SELECT count(*) FROM poel.jobs WHERE state = 'failed') + {dead}
"""
DEAD = "(SELECT count(*) FROM poel.jobs_dead)"

# Enqueue-to-start of the jobs started in (lo, hi], as 1% buckets. `id >= floor` bounds
# the scan to the rows enqueued lately (the primary key, and the history's id index):
# every job below the floor had started before the window opened. {jobs} is where every
# job is read: poel.all_jobs where finished jobs move to a history, else poel.jobs.
LATENCY = """
SELECT floor(ln(greatest(extract(epoch FROM started_at - created_at) * 1000, 0.01))
             / %(bucket)s)::int AS b, count(*)
FROM {jobs}
WHERE id >= %(floor)s AND started_at > %(lo)s AND started_at <= %(hi)s
GROUP BY b
"""

# The lowest id not started yet, searched upward from the last floor.
FLOOR = """
SELECT coalesce(min(id), %(max)s + 1) FROM poel.jobs
WHERE id >= %(floor)s AND state = 'queued'
"""


def bucket_ms(b: int) -> float:
    """The middle of latency bucket ``b`` (geometric)."""
    return math.exp((b + 0.5) * BUCKET)


def hist_percentile(hist: Counter[int], p: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = p / 100 * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return bucket_ms(b)
    return bucket_ms(max(hist))


class Server:
    """CPU of a local PostgreSQL server: the postmaster (with the time of its reaped
    children: exited backends and autovacuum workers) and every live process below it,
    but the sampler's own backend (``own``), whose queries are the harness's, not Poel's.
    The postmaster is the parent of that backend: no file of the server's is read."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        self.own = int(row[0]) if row else 0
        self.postmaster: int | None = None
        try:
            stat = Path(f"/proc/{self.own}/stat").read_text()
            comm = stat.split("(", 1)[1].rpartition(")")[0]
            if comm.startswith("postgres"):
                self.postmaster = int(stat.rpartition(")")[2].split()[1])  # ppid
        except (OSError, IndexError, ValueError):
            pass  # not on this machine: no CPU figures

    def ticks(self) -> int | None:
        if self.postmaster is None:
            return None
        live = [p for p in descendants(self.postmaster) if p != self.own]
        return process_jiffies(self.postmaster) + sum(process_jiffies(p, False) for p in live)


def tree_ticks(pids: Sequence[int]) -> int:
    """CPU ticks of these processes and every process below them (reaped ones too)."""
    return sum(process_jiffies(p) + sum(process_jiffies(d) for d in descendants(p)) for p in pids)


@dataclass
class Reading:
    """The cumulative figures a window's rates are taken against."""

    hi: Any  # the window's end, server time (a sample's now() minus LAG_S)
    done: int
    wal: int
    server: int | None
    serve: int
    harness: int
    machine: int
    mono: float


@dataclass
class Sampler:
    """One sample every ``--sample-every`` s, as a JSON line; kept for the summary."""

    conn: psycopg.Connection[Any]
    serves: list[subprocess.Popen[bytes]]
    stats: Any
    server: Server
    producer_pid: int = 0
    start: float = 0.0
    wal0: str = "0/0"
    id0: int = 0
    history: bool = False  # whether finished jobs move to poel.jobs_history
    stats0: tuple[Any, ...] = ()
    first: Reading | None = None
    last: Reading | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    hists: list[Counter[int]] = field(default_factory=list)
    floors: list[int] = field(default_factory=list)

    def _serve_ticks(self) -> int:
        return tree_ticks([p.pid for p in self.serves])

    def _harness_ticks(self) -> int:
        # This process (with its reaped children: the producer once it has exited) and
        # the producer while it lives.
        own = process_jiffies(os.getpid())
        return own + (process_jiffies(self.producer_pid, False) if self.producer_pid else 0)

    def _table_stats(self) -> tuple[Any, ...]:
        row = self.conn.execute(TABLE_STATS).fetchone()
        return tuple(row) if row else (0, 0, 0, 0, 0, 0, 0, False)

    def begin(self) -> None:
        row = self.conn.execute(
            "SELECT pg_current_wal_lsn()::text, coalesce((SELECT max(id) FROM poel.jobs), 0),"
            " now() - make_interval(secs => %s)",
            [LAG_S],
        ).fetchone()
        assert row is not None
        self.wal0, self.id0 = str(row[0]), int(row[1])
        found = self.conn.execute("SELECT to_regclass('poel.jobs_history') IS NOT NULL").fetchone()
        self.history = bool(found and found[0])  # finished jobs move out (migration 0013)
        # The floor of a window is the one found two samples before: a job below it had
        # started before that sample's query, which is before this window opened.
        self.floors = [self.id0 + 1, self.id0 + 1]
        self.stats0 = self._table_stats()
        self.start = time.monotonic()
        self.first = self.last = Reading(
            hi=row[2],
            done=0,
            wal=0,
            server=self.server.ticks(),
            serve=self._serve_ticks(),
            harness=self._harness_ticks(),
            machine=machine_jiffies()[0],
            mono=self.start,
        )

    def sample(self) -> dict[str, Any]:
        assert self.last is not None
        c, last = self.conn, self.last
        dead = DEAD if self.history else "0"
        counts = c.execute(COUNTS.format(dead=dead), {"wal0": self.wal0}).fetchone()
        assert counts is not None
        now, wal, max_id, queued, running, failed = counts
        hi = now - timedelta(seconds=LAG_S)
        hist: Counter[int] = Counter()
        params = {"bucket": BUCKET, "floor": self.floors[0], "lo": last.hi, "hi": hi}
        jobs = "poel.all_jobs" if self.history else "poel.jobs"
        for b, n in c.execute(LATENCY.format(jobs=jobs), params):
            hist[int(b)] += int(n)
        floor = c.execute(FLOOR, {"max": max_id, "floor": self.floors[-1]}).fetchone()
        self.floors = [self.floors[-1], int(floor[0]) if floor else max_id + 1]
        sizes = c.execute(SIZES).fetchone()
        assert sizes is not None
        table_bytes, indexes_bytes, each, history_bytes = sizes
        live, dead, vacuums, analyzes, upd, hot, dele, vacuuming = self._table_stats()
        s0 = self.stats0

        enqueued = max_id - self.id0
        reading = Reading(
            hi=hi,
            done=enqueued - queued - running - failed,
            wal=int(wal),
            server=self.server.ticks(),
            serve=self._serve_ticks(),
            harness=self._harness_ticks(),
            machine=machine_jiffies()[0],
            mono=time.monotonic(),
        )
        seconds = max(reading.mono - last.mono, 1e-9)
        jobs = reading.done - last.done
        ours = (reading.serve - last.serve) + (reading.harness - last.harness)
        if reading.server is not None and last.server is not None:
            ours += reading.server - last.server
        with self.stats.get_lock():
            lag_window = self.stats[LAG_MAX_WINDOW]
            self.stats[LAG_MAX_WINDOW] = 0.0
            lag_now, behind, produced = (
                self.stats[LAG_NOW],
                self.stats[BEHIND],
                self.stats[INSERTED],
            )
        record = {
            "bench": "soak",
            "t": round(reading.mono - self.start, 1),
            "enqueued": enqueued,
            "produced": int(produced),
            "done": reading.done,
            "failed": failed,
            "queued": queued,
            "running": running,
            "done_per_s": round(jobs / seconds, 1),
            "started": sum(hist.values()),
            "p50_ms": _round(hist_percentile(hist, 50)),
            "p99_ms": _round(hist_percentile(hist, 99)),
            "max_ms": _round(bucket_ms(max(hist)) if hist else None),
            "table_bytes": table_bytes,
            "indexes_bytes": indexes_bytes,
            "index_bytes": each,
            "history_bytes": int(history_bytes),
            "n_live_tup": live,
            "n_dead_tup": dead,
            "autovacuum_count": vacuums - s0[2],
            "autoanalyze_count": analyzes - s0[3],
            "vacuuming": vacuuming,
            "n_tup_upd": upd - s0[4],
            "n_tup_hot_upd": hot - s0[5],
            "n_tup_del": dele - s0[6],
            "wal_bytes": reading.wal,
            "wal_bytes_per_job": _per(reading.wal - last.wal, jobs),
            "server_cpu_us_per_job": _cpu_per_job(reading.server, last.server, jobs),
            "serve_cpu_us_per_job": _cpu_per_job(reading.serve, last.serve, jobs),
            "server_cores": _cores(reading.server, last.server, seconds),
            "serve_cores": _cores(reading.serve, last.serve, seconds),
            "machine_cores": _cores(reading.machine, last.machine, seconds),
            "others_cores": _cores(max(0, reading.machine - last.machine - ours), 0, seconds),
            "producer_lag_ms": round(1000 * lag_now, 1),
            "producer_lag_max_ms": round(1000 * lag_window, 1),
            "producer_behind_jobs": round(behind),
        }
        self.last = reading
        emit(record)
        self.records.append(record)
        self.hists.append(hist)
        return record

    def totals(self) -> dict[str, Any]:
        """Per-job figures over the whole run (first reading to last)."""
        assert self.first is not None and self.last is not None
        a, b = self.first, self.last
        jobs = b.done - a.done
        seconds = max(b.mono - a.mono, 1e-9)
        return {
            "wal_bytes_per_job": _per(b.wal - a.wal, jobs),
            "server_cpu_us_per_job": _cpu_per_job(b.server, a.server, jobs),
            "serve_cpu_us_per_job": _cpu_per_job(b.serve, a.serve, jobs),
            "server_cores": _cores(b.server, a.server, seconds),
            "serve_cores": _cores(b.serve, a.serve, seconds),
            "others_cores": _cores(
                max(
                    0,
                    (b.machine - a.machine)
                    - (b.serve - a.serve)
                    - (b.harness - a.harness)
                    - ((b.server or 0) - (a.server or 0)),
                ),
                0,
                seconds,
            ),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _per(amount: float, jobs: int) -> float | None:
    return round(amount / jobs) if jobs > 0 else None


def _cpu_per_job(ticks: int | None, before: int | None, jobs: int) -> float | None:
    """Microseconds of CPU a job done."""
    if ticks is None or before is None or jobs <= 0:
        return None
    return round(1e6 * (ticks - before) / CLK_TCK / jobs, 1)


def _cores(ticks: int | None, before: int | None, seconds: float) -> float | None:
    if ticks is None or before is None:
        return None
    return round((ticks - before) / CLK_TCK / seconds, 2)


# The run --------------------------------------------------------------------------------


def server_settings() -> dict[str, Any]:
    """The settings a reader needs to judge the run (autovacuum above all)."""
    with psycopg.connect(common.dsn("postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'port',"
            " 'autovacuum', 'autovacuum_naptime', 'shared_buffers', 'synchronous_commit',"
            " 'checkpoint_timeout', 'max_wal_size', 'shared_preload_libraries', 'fsync',"
            " 'track_io_timing')"
        ).fetchall()
    return {str(name): str(value) for name, value in rows}


def describe(settings: dict[str, Any]) -> str:
    """One line for the machine, one for the server."""
    cores = len(os.sched_getaffinity(0))
    pg = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if k != "server_version")
    return (
        f"- machine: {os.cpu_count()} CPUs (`nproc` = {cores}), load {os.getloadavg()[0]:.2f}"
        f" at the start\n- PostgreSQL {settings.get('server_version', '?')} ({pg})"
    )


def run(o: Options) -> dict[str, Any]:
    """The whole soak; returns the summary (the samples are printed as they come)."""
    common.SERVER = o.server
    started_cluster = ensure_cluster(o.cluster) if o.cluster else False
    try:
        if started_cluster:
            wait_for(_answers, 60, f"cluster {o.cluster}")
        settings = server_settings()
        config = {
            "rate": o.rate,
            "duration_s": o.duration,
            "serves": o.serves,
            "concurrency": o.concurrency,
            "sample_every_s": o.sample_every,
            "tick_ms": o.tick_ms,
            "server": o.server,
            "poel": o.poel or "this virtualenv",
            "serve_env": o.serve_env,
            "log": o.log,
        }
        emit({"bench": "soak", "config": config, "server": settings})
        if settings.get("autovacuum") != "on":
            note("[soak] WARNING: autovacuum is off on this server: not production defaults")
        report = _soak(o, settings)
        report["config"] = config
        report["server"] = settings
        report["machine"] = describe(settings)
        return report
    finally:
        if started_cluster and o.cluster:
            stop_cluster(o.cluster)


def _answers() -> bool:
    try:
        with psycopg.connect(common.dsn("postgres"), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _soak(o: Options, settings: dict[str, Any]) -> dict[str, Any]:
    poel = PoelBefore(o.poel, o.concurrency, o.log) if o.poel else Poel(o.concurrency, o.log)
    name = scratch_name("soak")
    url = create_database(name)
    note(f"[soak] database {name} on {o.server}")
    serves: list[subprocess.Popen[bytes]] = []
    producer: Any = None
    try:
        with _stdout_to_stderr():  # `poel-host migrate` prints; stdout is JSON lines
            poel.install(url)
        # The producer is forked before any connection of ours is open, and waits for go.
        ctx = multiprocessing.get_context("fork")
        stats = ctx.Array("d", 6)
        go = ctx.Event()
        producer = ctx.Process(
            target=_produce_when,
            args=(go, url, o.rate, o.duration, o.tick_ms / 1000, stats),
            daemon=True,
        )
        producer.start()
        LOGS.mkdir(exist_ok=True)
        for i in range(o.serves):
            argv, env = poel.command(url, "noop")
            # The drains' adapter archives at once; a soak keeps the production default.
            env.pop("POEL_ARCHIVE_AFTER_S", None)
            log = LOGS / f"soak-serve-{i}.log"
            serves.append(start_process(argv, env | o.serve_env, log))
        with psycopg.connect(url, autocommit=True) as conn:
            wait_for(
                lambda: _alive(serves) and _registered(conn) >= o.serves,
                60,
                f"{o.serves} serve(s) registered",
            )
            sampler = Sampler(conn, serves, stats, Server(conn), producer_pid=producer.pid)
            if sampler.server.postmaster is None:
                note("[soak] the server is not on this machine: no server CPU figures")
            sampler.begin()
            go.set()
            note(f"[soak] {o.rate:g} jobs/s for {o.duration:g} s, {o.serves} serve(s)")
            end = sampler.start + o.duration
            due = sampler.start
            while True:
                due = min(due + o.sample_every, end)
                time.sleep(max(0.0, due - time.monotonic()))
                _alive(serves)
                if producer.exitcode not in (None, 0):
                    raise RuntimeError(f"the producer failed (exit code {producer.exitcode})")
                r = sampler.sample()
                note(
                    f"[soak] t={r['t']:.0f}s done={r['done']} queued={r['queued']}"
                    f" p50={r['p50_ms']}ms p99={r['p99_ms']}ms dead={r['n_dead_tup']}"
                    f" size={(r['table_bytes'] + r['indexes_bytes']) / 2**20:.1f}MB"
                    f" lag={r['producer_lag_max_ms']}ms"
                )
                if due >= end:
                    break
            producer.join(10)
            with stats.get_lock():
                producer_figures = {
                    "produced": int(stats[INSERTED]),
                    "statements": int(stats[STATEMENTS]),
                    "lag_max_ms": round(1000 * stats[LAG_MAX], 1),
                    "behind_jobs_at_end": round(o.rate * o.duration - stats[INSERTED]),
                }
            report = summarize(sampler, o, producer_figures)
            report["database"] = name
            if o.plot:
                plot(sampler.records, o, settings, o.plot)
                report["plot"] = str(o.plot)
            emit(report)
            return report
    finally:
        if producer is not None and producer.is_alive():
            producer.terminate()
            producer.join(5)
        for proc in serves:
            stop_process(proc)
        if o.keep_database:
            note(f"[soak] kept database {name}")
        else:
            drop_database(name)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 (a child's output too) to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _produce_when(
    go: Any, url: str, rate: float, duration: float, tick_s: float, stats: Any
) -> None:
    go.wait()
    produce(url, rate, duration, tick_s, stats)


def _alive(serves: Sequence[subprocess.Popen[bytes]]) -> bool:
    for i, proc in enumerate(serves):
        if proc.poll() is not None:
            log = LOGS / f"soak-serve-{i}.log"
            raise RuntimeError(f"serve {i} exited ({proc.returncode}); its log: {log}")
    return True


def _registered(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM poel.workers WHERE gone_at IS NULL").fetchone()
    return int(row[0]) if row else 0


# Summary --------------------------------------------------------------------------------


def summarize(sampler: Sampler, o: Options, producer: dict[str, Any]) -> dict[str, Any]:
    """The run's first stretch against its last, storage, per-job costs, the producer."""
    records, hists = sampler.records, sampler.hists
    end = records[-1]["t"]
    span = min(o.compare_s, end / 2) if o.compare_s else 0.1 * end
    head = [i for i, r in enumerate(records) if r["t"] <= span + 1e-6] or [0]
    tail = [i for i, r in enumerate(records) if r["t"] >= end - span - 1e-6] or [len(records) - 1]

    def latency(indices: list[int], p: float) -> float | None:
        merged: Counter[int] = Counter()
        for i in indices:
            merged.update(hists[i])
        return _round(hist_percentile(merged, p))

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(b / a, 2) if a and b is not None else None

    def storage(r: dict[str, Any]) -> int:
        return int(r["table_bytes"]) + int(r["indexes_bytes"]) + int(r.get("history_bytes", 0))

    last = records[-1]
    before_tail = records[tail[0] - 1] if tail[0] > 0 else records[0]
    tail_minutes = max((last["t"] - before_tail["t"]) / 60, 1e-9)
    p50_first, p50_last = latency(head, 50), latency(tail, 50)
    p99_first, p99_last = latency(head, 99), latency(tail, 99)
    biggest = max(records, key=storage)
    claim = [r["index_bytes"].get("jobs_ready_idx") for r in records]
    upd = last["n_tup_upd"]
    report = {
        "bench": "soak",
        "summary": "soak",
        "seconds": end,
        "enqueued": last["enqueued"],
        "done": last["done"],
        "failed": last["failed"],
        "queued_at_end": last["queued"],
        "queued_max": max(r["queued"] for r in records),
        "done_per_s": round(last["done"] / end, 1) if end else None,
        "compare_s": round(span, 1),
        "p50_ms_first": p50_first,
        "p50_ms_last": p50_last,
        "p50_last_vs_first": ratio(p50_first, p50_last),
        "p99_ms_first": p99_first,
        "p99_ms_last": p99_last,
        "p99_last_vs_first": ratio(p99_first, p99_last),
        "p99_ms_worst_window": max((r["p99_ms"] or 0) for r in records),
        "storage_bytes_first_sample": storage(records[0]),
        "storage_bytes_end": storage(last),
        "storage_bytes_max": storage(biggest),
        "storage_max_at_s": biggest["t"],
        "storage_growth_last_mb_per_min": round(
            (storage(last) - storage(before_tail)) / 2**20 / tail_minutes, 2
        ),
        "table_bytes_end": last["table_bytes"],
        "table_bytes_max": max(int(r["table_bytes"]) for r in records),
        "history_bytes_end": last.get("history_bytes", 0),
        "indexes_bytes_end": last["indexes_bytes"],
        "claim_index_bytes_end": claim[-1],
        "claim_index_bytes_max": max((c for c in claim if c is not None), default=None),
        "dead_tuples_max": max(r["n_dead_tup"] for r in records),
        "dead_tuples_end": last["n_dead_tup"],
        "autovacuum_runs": last["autovacuum_count"],
        "autoanalyze_runs": last["autoanalyze_count"],
        "hot_update_share": round(last["n_tup_hot_upd"] / upd, 3) if upd else None,
        "rows_deleted": last["n_tup_del"],
        **sampler.totals(),
        "producer_rate": round(producer["produced"] / o.duration, 1),
        "producer_lag_max_ms": producer["lag_max_ms"],
        "producer_behind_jobs_at_end": producer["behind_jobs_at_end"],
        "producer_kept_up": producer["lag_max_ms"] < 1000
        and producer["behind_jobs_at_end"] <= o.rate * o.tick_ms / 1000,
    }
    return report


def markdown(report: dict[str, Any]) -> str:
    """The summary as a table, for a person."""
    c = report["config"]
    mb = 2**20
    span = report["compare_s"]
    span_txt = f"{span / 60:g} min" if span >= 60 else f"{span:g} s"
    lines = [
        f"### soak: {c['rate']:g} jobs/s for {c['duration_s']:g} s, {c['serves']} serve(s)"
        f" at c={c['concurrency']}, poel: {c['poel']}",
        "",
        report["machine"],
        f"- serve environment: {c['serve_env'] or 'defaults'}",
        "",
        "| figure | value |",
        "|---|---:|",
    ]

    def row(label: str, value: Any) -> None:
        lines.append(f"| {label} | {value} |")

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms"

    row(
        "jobs enqueued / done / failed",
        f"{report['enqueued']:,} / {report['done']:,} / {report['failed']:,}",
    )
    row("done a second (whole run)", f"{report['done_per_s']:,}")
    row("backlog at the end / at most", f"{report['queued_at_end']:,} / {report['queued_max']:,}")
    row(
        f"p50 first {span_txt} → last {span_txt}",
        f"{ms(report['p50_ms_first'])} →"
        f" {ms(report['p50_ms_last'])} ({report['p50_last_vs_first']}x)",
    )
    row(
        f"p99 first {span_txt} → last {span_txt}",
        f"{ms(report['p99_ms_first'])} →"
        f" {ms(report['p99_ms_last'])} ({report['p99_last_vs_first']}x)",
    )
    row("p99, worst window", ms(report["p99_ms_worst_window"]))
    row(
        "table + indexes: first sample → end (max)",
        f"{report['storage_bytes_first_sample'] / mb:.1f} → {report['storage_bytes_end'] / mb:.1f}"
        f" MB ({report['storage_bytes_max'] / mb:.1f} MB at {report['storage_max_at_s']:.0f} s)",
    )
    row(
        f"storage growth over the last {span_txt}",
        f"{report['storage_growth_last_mb_per_min']} MB/min",
    )
    claim = report["claim_index_bytes_end"]
    if claim is not None:
        row(
            "claim index (jobs_ready_idx) end / max",
            f"{claim / mb:.2f} / {report['claim_index_bytes_max'] / mb:.2f} MB",
        )
    row("dead tuples: max / end", f"{report['dead_tuples_max']:,} / {report['dead_tuples_end']:,}")
    row(
        "autovacuum / autoanalyze runs",
        f"{report['autovacuum_runs']} / {report['autoanalyze_runs']}",
    )
    row("HOT share of updates", report["hot_update_share"])
    row("rows deleted (retention)", f"{report['rows_deleted']:,}")
    row("WAL a job", f"{report['wal_bytes_per_job']} bytes")
    row("server CPU a job (all PostgreSQL processes)", f"{report['server_cpu_us_per_job']} µs")
    row("serve CPU a job", f"{report['serve_cpu_us_per_job']} µs")
    row(
        "cores: server / serve / others (other sessions)",
        f"{report['server_cores']} / {report['serve_cores']} / {report['others_cores']}",
    )
    kept = "yes" if report["producer_kept_up"] else "**no**"
    row(
        "producer: rate / worst lag / behind at end / kept up",
        f"{report['producer_rate']:,} jobs/s / {report['producer_lag_max_ms']} ms /"
        f" {report['producer_behind_jobs_at_end']:,} / {kept}",
    )
    if report.get("plot"):
        row("plot", f"`{report['plot']}`")
    return "\n".join(lines) + "\n"


# The plot -------------------------------------------------------------------------------


def plot(records: list[dict[str, Any]], o: Options, settings: dict[str, Any], path: Path) -> None:
    """Six stacked panels sharing the time axis: latency, backlog and producer lag, sizes,
    tuples with autovacuum runs marked, WAL and CPU a job, cores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] / 60 for r in records]
    fig, axes = plt.subplots(6, 1, figsize=(11, 17), sharex=True)
    lat, backlog, sizes, tuples, cost, cores = axes
    retention = o.serve_env.get("POEL_RETAIN_SUCCEEDED_HOURS", "168 (default)")
    fig.suptitle(
        f"Poel soak: {o.rate:g} jobs/s, {o.serves} serve(s) x c={o.concurrency}, "
        f"retention {retention} h, poel: {o.poel or 'this venv'}\n"
        f"PostgreSQL {settings.get('server_version', '?')}, autovacuum"
        f" {settings.get('autovacuum', '?')}, port {settings.get('port', '?')};"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        fontsize=11,
    )

    def series(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else r[key] for r in records]

    lat.plot(t, series("p50_ms"), label="p50")
    lat.plot(t, series("p99_ms"), label="p99")
    lat.plot(t, series("max_ms"), label="max", linewidth=0.6, alpha=0.5)
    lat.set_yscale("log")
    lat.set_ylabel("enqueue→start, ms")
    lat.legend(loc="upper left")

    backlog.plot(t, series("queued"), label="queued (backlog)")
    backlog.plot(t, series("running"), label="running")
    backlog.set_ylabel("jobs")
    lag = backlog.twinx()
    lag.plot(t, series("producer_lag_max_ms"), color="tab:red", linewidth=0.8, label="lag")
    lag.set_ylabel("producer lag, ms (worst)", color="tab:red")
    backlog.legend(loc="upper left")

    # The table on the left axis, the indexes on the right: the small partial indexes
    # (the claim's) are where bloat shows first, and would be flat beside the table.
    mb = 2**20
    sizes.plot(t, [r["table_bytes"] / mb for r in records], label="table", color="black")
    sizes.plot(
        t,
        [r.get("history_bytes", 0) / mb for r in records],
        label="history",
        color="black",
        linestyle="--",
    )
    sizes.set_ylabel("table, MB")
    indexes = sizes.twinx()
    total = [r["indexes_bytes"] / mb for r in records]
    indexes.plot(t, total, label="all indexes", linewidth=2, color="tab:grey")
    names = sorted({n for r in records for n in r["index_bytes"]})
    palette = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        values = [r["index_bytes"].get(name, math.nan) / mb for r in records]
        style = "-" if i < 10 else ":"
        indexes.plot(t, values, label=name, linewidth=0.9, color=palette(i % 10), linestyle=style)
    indexes.set_ylabel("indexes, MB")
    handles = sizes.get_legend_handles_labels()
    more = indexes.get_legend_handles_labels()
    sizes.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=7, ncol=3)

    tuples.plot(t, series("n_dead_tup"), label="dead tuples")
    tuples.plot(t, series("n_live_tup"), label="live tuples", linewidth=0.8)
    previous = 0
    marked = False
    for r, x in zip(records, t, strict=True):
        if r["autovacuum_count"] > previous:
            tuples.axvline(
                x,
                color="tab:green",
                linewidth=0.8,
                alpha=0.7,
                label=None if marked else "autovacuum ran",
            )
            marked = True
        previous = r["autovacuum_count"]
    tuples.set_ylabel("tuples (jobs table)")
    tuples.legend(loc="upper left")

    cost.plot(t, series("wal_bytes_per_job"), label="WAL bytes/job", color="tab:purple")
    cost.set_ylabel("WAL bytes a job", color="tab:purple")
    cpu = cost.twinx()
    cpu.plot(t, series("server_cpu_us_per_job"), label="server CPU µs/job", color="tab:orange")
    cpu.plot(t, series("serve_cpu_us_per_job"), label="serve CPU µs/job", color="tab:brown")
    cpu.set_ylabel("CPU µs a job")
    cpu.legend(loc="upper right")
    cost.legend(loc="upper left")

    cores.plot(t, series("server_cores"), label="PostgreSQL")
    cores.plot(t, series("serve_cores"), label="serve(s)")
    cores.plot(t, series("others_cores"), label="others (other sessions)", linestyle="--")
    cores.plot(t, series("machine_cores"), label="machine", linewidth=0.6, color="grey")
    cores.set_ylabel("cores")
    cores.set_xlabel("minutes")
    cores.legend(loc="upper left", fontsize=8, ncol=4)

    for ax in [*axes, lag, indexes, cpu]:
        if ax is not lat:
            ax.set_ylim(bottom=0)  # drift is read against zero, not against the last wiggle
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    note(f"[soak] plot: {path}")


# Command line ---------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> str:
    """Run the soak the arguments describe; the summary as markdown (run.py's table)."""
    report = run(Options.from_args(args))
    return markdown(report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000, help="jobs a second")
    parser.add_argument("--concurrency", type=int, default=100, help="WORKER_CONCURRENCY")
    add_arguments(parser)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the serves and the producer stop, the database goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
