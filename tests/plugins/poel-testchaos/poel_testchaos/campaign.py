"""An adversarial campaign, the way Jepsen tests databases (issue 16, bullet 8).

Thousands of jobs, plain ones mixed with ones that misbehave (see :mod:`.plugin`), run
over several real ``poel-host serve`` processes while their database connections are
terminated (and, in the full run only, the server restarted). Every job's payload fixes
what it does, so its fate is known before it runs; at the end the database and the
per-attempt log written by the handlers are checked:

- **lost**: a job not final (queued or running) once the run is over;
- **overlapping**: two runs of one job's handler overlapping in time, or a run that
  started after the job's fate was written (see :func:`overlaps`);
- **collateral**: a job whose final state or whose error history is not explained by its
  own payload (a plain job failed, or failed once with someone else's error). Retries
  caused by the faults themselves ("worker lost" when a serve is killed or cut off, a
  terminated connection in a handler that queries) are counted apart as
  ``collateral_retries``: they are the price of the fault, not a bug;
- **unhealthy**: a serve whose ``/health`` is not 200 at the end or that does not exit 0
  on SIGTERM;
- **leftover_helpers**: a helper program started by a job still running after the serves
  stopped.

What each job does and how a fate is judged are in :mod:`.verdicts`; this module runs
the campaign. Used by ``benchmarks/campaign.py`` (the full run, by hand) and
``tests/chaos/test_campaign.py`` (a reduced run in CI); it lives in the test plugin
because both need the plugin installed anyway (``serve`` loads it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from poel_testchaos.plugin import HELPER_PREFIX
from poel_testchaos.verdicts import (
    CATALOGUE,
    CHILD,
    Behaviour,
    explain,
    overlaps,
)


@dataclass
class Options:
    server: str = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432")
    jobs: int = 300
    serves: int = 2
    processes: int = 2
    threads: int = 2
    concurrency: int = 10
    lease_ms: int = 2000
    terminate_every_s: float = 4.0
    restart_postgres_every_s: float = 0.0  # 0: never (CI shares the server)
    postgres_cluster: tuple[str, str] = ("15", "main")
    deadline_s: float = 240.0
    seed: int = 16
    keep_database: bool = False
    log_dir: Path | None = None


@dataclass
class Serve:
    """One ``poel-host serve`` slot: restarted whenever its process dies."""

    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    deaths: list[int] = field(default_factory=list)  # exit codes of the ones that died

    def port(self) -> int | None:
        """The HTTP port it logged, or None before it listens."""
        for line in self.log.read_text(errors="replace").splitlines():
            if '"http listening"' in line:
                try:
                    return int(json.loads(line)["port"])
                except (ValueError, KeyError):
                    return None
        return None


def database_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path="/" + name))


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url(server, "postgres"), autocommit=True, row_factory=dict_row)


def poll(predicate: Any, *, timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy or the deadline; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Campaign:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.run_id = uuid.uuid4().hex[:8]
        self.database = f"poel_campaign_{self.run_id}"
        self.dsn = database_url(options.server, self.database)
        self.log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="poel-campaign-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.behaviour_of: dict[int, Behaviour] = {}
        self.drawn: list[Behaviour] = []
        self.serves: list[Serve] = []
        self.faults: Counter[str] = Counter()

    # Set-up ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POEL_")}
        for key in ("DATABASE_URL", "HEALTH_CHECK_PORT", "WORKER_CONCURRENCY", "JOB_TIMEOUT_MS"):
            env.pop(key, None)
        env.update(
            DATABASE_URL=self.dsn,
            HEALTH_CHECK_PORT="0",
            POEL_LOAD_PLUGINS="poel-testchaos",
            POEL_PROCESSES=str(self.o.processes),
            POEL_THREADS=str(self.o.threads),
            WORKER_CONCURRENCY=str(self.o.concurrency),
            POEL_LEASE_MS=str(self.o.lease_ms),
            POEL_RETRY_BACKOFF_MS="100",
            POEL_POLL_INTERVAL_MS="200",
            POEL_SHUTDOWN_TIMEOUT_MS="10000",
            JOB_TIMEOUT_MS="20000",
            POEL_LOG_LEVEL="info",
        )
        return env

    def create(self) -> None:
        with _admin(self.o.server) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        subprocess.run(
            [sys.executable, "-m", "poel_host", "migrate"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def drop(self) -> None:
        with _admin(self.o.server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def enqueue(self) -> None:
        """N jobs drawn with a seeded RNG; each payload alone says what it will do."""
        from poel_host import JobRequest, Queue

        rng = random.Random(self.o.seed)
        kinds = list(CATALOGUE.values())
        self.drawn = drawn = rng.choices(kinds, weights=[b.weight for b in kinds], k=self.o.jobs)
        requests = [
            JobRequest(
                b.job_type,
                {"key": f"{self.run_id}-{i}", "do": list(b.do), "seconds": b.seconds},
                max_attempts=b.max_attempts,
            )
            for i, b in enumerate(drawn)
        ]
        with Queue(self.dsn) as queue:
            ids = queue.enqueue_many(requests)
        self.behaviour_of = dict(zip(ids, drawn, strict=True))

    # Running --------------------------------------------------------------------------

    def start_serve(self, index: int) -> Serve:
        log = self.log_dir / f"serve-{index}-{len(self.faults)}-{time.monotonic_ns()}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "poel_host", "serve"],
                env=self.env(),
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        return Serve(index, proc, log)

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]] | None:
        """One query on a fresh connection; None while the server is unreachable."""
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=5
            ) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.OperationalError:
            return None

    def unfinished(self) -> int | None:
        rows = self.query(
            "SELECT count(*) AS n FROM poel.jobs WHERE state NOT IN ('succeeded', 'failed',"
            " 'cancelled')"
        )
        return None if rows is None else int(rows[0]["n"])

    def terminate(self) -> None:
        try:
            with _admin(self.o.server) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.database],
                ).fetchall()
        except psycopg.OperationalError:
            return
        self.faults["terminations"] += 1
        self.faults["connections_terminated"] += sum(1 for r in rows if r["ended"])

    def restart_postgres(self) -> None:
        version, cluster = self.o.postgres_cluster
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
            check=True,
            timeout=120,
        )
        self.faults["postgres_restarts"] += 1

    def revive(self) -> None:
        """Start a new serve in the place of each one that died: a job that kills its
        worker is part of the test (a death no job explains shows as collateral)."""
        for i, serve in enumerate(self.serves):
            code = serve.proc.poll()
            if code is not None:
                replacement = self.start_serve(serve.index)
                replacement.deaths = [*serve.deaths, code]
                self.serves[i] = replacement
                if code == 4 and "cannot connect to PostgreSQL" in serve.log.read_text(
                    "utf-8", "replace"
                ):
                    # Started while the server restarted: refusing to start is the contract.
                    self.faults["serve_starts_refused_database_down"] += 1
                else:
                    self.faults["serve_deaths"] += 1

    def drive(self) -> bool:
        """Run the serves until every job is final or the deadline; True if all are."""
        self.serves = [self.start_serve(i) for i in range(self.o.serves)]
        start = time.monotonic()
        next_cut = start + self.o.terminate_every_s
        every_restart = self.o.restart_postgres_every_s
        next_restart = start + every_restart if every_restart else float("inf")
        while time.monotonic() - start < self.o.deadline_s:
            self.revive()
            now = time.monotonic()
            if now >= next_cut:
                self.terminate()
                next_cut = now + self.o.terminate_every_s
            if now >= next_restart:
                self.restart_postgres()
                next_restart = time.monotonic() + every_restart
            if self.unfinished() == 0:
                return True
            time.sleep(0.5)
        return False

    def health(self, serve: Serve) -> int | None:
        port = serve.port()
        if port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def stop(self) -> list[dict[str, Any]]:
        """Each serve's health (polled for a while: one just restarted may still be
        starting) and its exit code on SIGTERM."""
        problems = []
        self.revive()  # one killed just before the end is not unhealthy: it was replaced
        for serve in self.serves:
            status = poll(lambda s=serve: self.health(s) == 200 and 200, timeout=30) or (
                self.health(serve)
            )
            serve.proc.send_signal(signal.SIGTERM)
            try:
                code = serve.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.proc.kill()
                code = serve.proc.wait(timeout=10)
                code = f"no exit within 60s (killed: {code})"  # type: ignore[assignment]
            if status != 200 or code != 0:
                problems.append(
                    {"serve": serve.index, "health": status, "exit": code, "log": str(serve.log)}
                )
        return problems

    def leftover_helpers(self) -> list[str]:
        """Helpers of this run still alive (then killed: they would sleep for 10 minutes).
        Polled for a moment: a process group may be killed just after serve exits."""
        marker = HELPER_PREFIX + self.run_id

        def alive() -> list[tuple[int, str]]:
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
                    state = (entry / "stat").read_text().split(") ", 1)[1][:1]
                except (OSError, IndexError, UnicodeDecodeError):
                    continue
                if argv0.startswith(marker) and state != "Z":
                    found.append((int(entry.name), argv0))
            return found

        left = poll(lambda: not alive(), timeout=5) or alive()
        left = [] if left is True else left
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        names = {f"{self.run_id}-{i}": b.name for i, b in enumerate(self.drawn)}
        keys = [argv0.removeprefix(HELPER_PREFIX) for _, argv0 in left]
        return [f"{key} ({names.get(key, '?')})" for key in keys]

    # Checks ---------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        jobs = self.query(
            "SELECT id, job_type AS type, state::text AS state, attempts, max_attempts, errors,"
            " payload->>'key' AS key, finished_at FROM poel.jobs ORDER BY id"
        )
        runs = self.query(
            "SELECT job_id, run, min(at) FILTER (WHERE what = 'start') AS started,"
            " max(at) FILTER (WHERE what = 'end') AS ended"
            " FROM public.poel_chaos_attempts GROUP BY job_id, run"
        )
        assert jobs is not None and runs is not None, "the database is unreachable"
        runs_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for run in runs:
            if run["started"] is not None:
                runs_of[run["job_id"]].append(run)
        report: dict[str, Any] = {
            "lost": [],
            "overlapping": [],
            "collateral": [],
            "collateral_retries": Counter(),
        }
        by_behaviour: dict[str, Counter[str]] = defaultdict(Counter)
        for job in jobs:
            behaviour = self.behaviour_of.get(job["id"])
            if behaviour is None:
                behaviour = CHILD if (job["key"] or "").endswith("/child") else None
            name = behaviour.name if behaviour else f"unknown:{job['type']}"
            by_behaviour[name][job["state"]] += 1
            seen = {"id": job["id"], "behaviour": name}
            if job["state"] not in ("succeeded", "failed", "cancelled"):
                report["lost"].append({**seen, "state": job["state"]})
            if bad := overlaps(runs_of.get(job["id"], []), job["finished_at"]):
                report["overlapping"].append({**seen, "why": bad})
            verdict = explain(behaviour, job)
            if verdict["unexplained"]:
                report["collateral"].append({**seen, "state": job["state"], **verdict})
            report["collateral_retries"].update(verdict["collateral_retries"])
        killers = {i for i, b in self.behaviour_of.items() if b.kills_serve}
        report["serve_killer_runs"] = sum(len(runs_of.get(i, [])) for i in killers)
        report["by_behaviour"] = {k: dict(v) for k, v in sorted(by_behaviour.items())}
        report["jobs"] = len(jobs)
        return report

    # The whole run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        self.create()
        helpers: list[str] | None = None
        try:
            self.enqueue()
            finished = self.drive()
            drained_s = time.monotonic() - began
            unhealthy = self.stop()
            helpers = self.leftover_helpers()
            report = self.check()
        finally:  # also on an interrupted run: nothing of ours may outlive it
            for serve in self.serves:
                if serve.proc.poll() is None:
                    serve.proc.kill()
                    serve.proc.wait(timeout=10)
            if helpers is None:
                self.leftover_helpers()
            if not self.o.keep_database:
                self.drop()
        executors = Counter(b.executor for b in self.behaviour_of.values())
        report.update(
            run_id=self.run_id,
            finished_before_deadline=finished,
            by_executor=dict(executors),
            faults=dict(self.faults),
            serve_exit_codes=sorted({c for s in self.serves for c in s.deaths}),
            unhealthy=unhealthy,
            leftover_helpers=helpers,
            drained_s=round(drained_s, 1),
            duration_s=round(time.monotonic() - began, 1),
            logs=str(self.log_dir),
        )
        report["counts"] = {
            "lost": len(report["lost"]),
            "overlapping": len(report["overlapping"]),
            "collateral": len(report["collateral"]),
            "collateral_retries": sum(report["collateral_retries"].values()),
            "unhealthy": len(unhealthy),
            # Each run of a serve killer kills one serve; any other death is a crash.
            "unexplained_serve_deaths": max(
                0, self.faults["serve_deaths"] - report["serve_killer_runs"]
            ),
            "leftover_helpers": len(helpers),
        }
        report["collateral_retries"] = dict(report["collateral_retries"])
        return report
