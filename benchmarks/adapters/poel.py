"""Poel: a real ``poel-host serve`` process with the ``poel-bench`` plugin loaded.

Measured exactly as users run it (console script, gevent patched first, JSON logs on
stderr), with the log level as a parameter so the cost of per-job logs shows.
``PoelBefore`` is the same from another virtualenv's install (``--poel-before``), so
that a change and the code before it are measured in one interleaved run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from adapters import System

POEL_HOST = str(Path(sys.executable).with_name("poel-host"))
TYPES = {
    "noop": "bench.noop",
    "stamp": "bench.stamp",
    "http": "bench.http",
    "sleep": "bench.sleep",
}


def _env(url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "POEL_LOAD_PLUGINS": "poel-bench",
        "POEL_ENV": "development",
        "HEALTH_CHECK_PORT": "0",
        # Finished jobs move into the history at once, as they do at a steady rate once
        # the first minute has passed: a drain pays for the move (a Poel before issue 18's
        # history ignores the setting).
        "POEL_ARCHIVE_AFTER_S": "0",
    }


def _jobs(conn: psycopg.Connection[Any]) -> str:
    """Where every job is read: ``poel.all_jobs`` (live and archived), or ``poel.jobs`` on
    a Poel without a history."""
    row = conn.execute("SELECT to_regclass('poel.all_jobs') IS NOT NULL").fetchone()
    return "poel.all_jobs" if row and row[0] else "poel.jobs"


class Poel(System):
    name = "poel"
    family = "poel"
    host = POEL_HOST

    def __init__(self, concurrency: int = 10, log: str = "info") -> None:
        super().__init__(concurrency)
        self.log = log

    @property
    def config(self) -> str:
        return f"c={self.concurrency} log={self.log}"

    def install(self, url: str) -> None:
        subprocess.run([self.host, "migrate"], env={**os.environ, **_env(url)}, check=True)

    def fill(self, conn: psycopg.Connection[Any], finished: int, future: int) -> None:
        conn.execute(
            "INSERT INTO poel.jobs (job_type, state, attempts, created_at, started_at,"
            " finished_at, run_at, updated_at)"
            " SELECT 'bench.noop', 'succeeded', 1, t, t, t, t, t"
            " FROM generate_series(1, %s), LATERAL (SELECT now() - interval '1 hour' AS t) x",
            [finished],
        )
        conn.execute(
            "INSERT INTO poel.jobs (job_type, run_at)"
            " SELECT 'bench.noop', now() + interval '1 day' FROM generate_series(1, %s)",
            [future],
        )

    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        conn.execute(
            "INSERT INTO poel.jobs (job_type) SELECT %s FROM generate_series(1, %s)",
            [TYPES[kind], n],
        )

    def enqueue_stamp(self, conn: psycopg.Connection[Any], t: float) -> None:
        conn.execute("SELECT poel.enqueue('bench.stamp', %s::jsonb)", [json.dumps({"t": t})])

    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        env = _env(url) | {
            "WORKER_CONCURRENCY": str(self.concurrency),
            "POEL_LOG_LEVEL": self.log,
        }
        return [self.host, "serve"], env

    def done(self, conn: psycopg.Connection[Any], since: Any) -> int:
        row = conn.execute(
            f"SELECT count(*) FROM {_jobs(conn)} WHERE state = 'succeeded' AND finished_at >= %s",
            [since],
        ).fetchone()
        return int(row[0]) if row else 0

    def first_error(self, conn: psycopg.Connection[Any], since: Any) -> str | None:
        row = conn.execute(
            f"SELECT last_error FROM {_jobs(conn)}"
            " WHERE last_error IS NOT NULL AND updated_at >= %s LIMIT 1",
            [since],
        ).fetchone()
        return str(row[0]) if row else None

    def settle(self, conn: psycopg.Connection[Any]) -> None:
        """Wait (up to a minute) until the archiver has moved every finished job."""
        if _jobs(conn) == "poel.jobs":
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM poel.jobs WHERE state = 'succeeded'"
            ).fetchone()
            if not row or not row[0]:
                return
            time.sleep(0.1)

    def window(self, conn: psycopg.Connection[Any], since: Any) -> float:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at))"
            f" FROM {_jobs(conn)} WHERE state = 'succeeded' AND finished_at >= %s",
            [since],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else float("nan")


class PoelBefore(Poel):
    """Poel from the virtualenv ``venv`` (e.g. the commit before a change, installed with
    the ``poel-bench`` plugin), beside ``poel`` from this one. Its own family, so its
    template is migrated by its own ``poel-host migrate``."""

    name = "poel-before"
    family = "poel-before"

    def __init__(self, venv: str, concurrency: int = 10, log: str = "info") -> None:
        super().__init__(concurrency, log)
        self.host = str(Path(venv) / "bin" / "poel-host")


#: (kind, executor) -> the poel-bench job type that runs it there
EXECUTOR_TYPES = {
    ("noop", "greenlet"): "bench.noop",
    ("noop", "process"): "bench.noop_process",
    ("cpu", "greenlet"): "bench.cpu_greenlet",
    ("cpu", "thread"): "bench.cpu_thread",
    ("cpu", "process"): "bench.cpu",
}
#: the plugins each executor's run loads: a process (thread) job type loaded makes serve
#: start its children (threads) and claim for them, so only these runs load one
EXECUTOR_PLUGINS = {
    "greenlet": "poel-bench",
    "thread": "poel-bench,poel-bench-thread",
    "process": "poel-bench,poel-bench-process",
}


class PoelExecutor(Poel):
    """Poel running the benchmark's jobs on one executor: ``process`` (``POEL_PROCESSES``
    children), ``thread`` (``POEL_THREADS`` threads) or ``greenlet`` (``WORKER_CONCURRENCY``
    greenlets), the job types of ``EXECUTOR_TYPES``."""

    def __init__(
        self,
        executor: str,
        *,
        processes: int = 2,
        threads: int = 4,
        concurrency: int = 10,
        log: str = "warning",
    ) -> None:
        super().__init__(concurrency, log)
        self.executor = executor
        self.processes = processes
        self.threads = threads

    @property
    def config(self) -> str:
        size = {
            "process": f"processes={self.processes}",
            "thread": f"threads={self.threads}",
            "greenlet": f"c={self.concurrency}",
        }[self.executor]
        return f"executor={self.executor} {size} log={self.log}"

    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        conn.execute(
            "INSERT INTO poel.jobs (job_type) SELECT %s FROM generate_series(1, %s)",
            [EXECUTOR_TYPES[(kind, self.executor)], n],
        )

    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(url, kind)
        env |= {
            "POEL_LOAD_PLUGINS": EXECUTOR_PLUGINS[self.executor],
            "POEL_PROCESSES": str(self.processes),
            "POEL_THREADS": str(self.threads),
        }
        return argv, env
