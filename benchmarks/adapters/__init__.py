"""One module per system under test; each exposes ``System`` subclasses.

The harness (``run.py``) only speaks this interface, so every system is prepared,
loaded, started, watched and timed by the same code; what differs is the SQL of each
system's own tables and how its worker is started.

Job kinds every system runs: ``noop`` (nothing), ``stamp`` (record enqueue-to-start
latency, see ``common.write_stamp``) and ``http`` (wait a second on a local server).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import Any

import psycopg
from common import BENCH_DIR


class System(ABC):
    """A job system in one configuration (e.g. Poel at concurrency 100, logs at info)."""

    name: str = ""
    #: systems sharing a schema share one template database per background size
    family: str = ""
    #: a few hundred jobs a second at best: drained with --slow-n jobs, so that a full run
    #: stays within an hour (jobs a second from 2,000 jobs is as steady as from 20,000)
    slow: bool = False

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency

    @property
    def config(self) -> str:
        """The configuration as shown in results (``c=100 log=info``)."""
        return f"c={self.concurrency}" if self.concurrency else ""

    @abstractmethod
    def install(self, url: str) -> None:
        """Create the system's schema in an empty database."""

    @abstractmethod
    def fill(self, conn: psycopg.Connection[Any], finished: int, future: int) -> None:
        """Add background rows: ``finished`` jobs done an hour ago, ``future`` due tomorrow."""

    @abstractmethod
    def insert(self, conn: psycopg.Connection[Any], n: int, kind: str) -> None:
        """Bulk-insert ``n`` due jobs of ``kind`` in one statement."""

    @abstractmethod
    def enqueue_stamp(self, conn: psycopg.Connection[Any], t: float) -> None:
        """Enqueue one ``stamp`` job carrying the wall-clock time ``t``, as a client would."""

    @abstractmethod
    def command(self, url: str, kind: str) -> tuple[list[str], dict[str, str]]:
        """The worker's argv and extra environment."""

    def mark(self, conn: psycopg.Connection[Any]) -> Any:
        """Where this run starts (database time by default): ``done`` and ``window`` look
        only past it, so background rows and earlier runs never count."""
        row = conn.execute("SELECT now()").fetchone()
        return row[0] if row else None

    @abstractmethod
    def done(self, conn: psycopg.Connection[Any], since: Any) -> int:
        """How many jobs finished successfully at or after the mark ``since``."""

    def first_error(self, conn: psycopg.Connection[Any], since: Any) -> str | None:
        """An error a job past ``since`` recorded, if any: the benchmark's jobs never fail,
        so one that did means a broken setup, reported at once instead of after the
        drain's timeout. None where the adapter does not look (the default)."""
        return None

    def settle(self, conn: psycopg.Connection[Any]) -> None:
        """Once every job is done, wait for the work a finished job still causes (Poel's
        move into its history), so that what a job costs the server counts it all.
        Nothing to wait for by default."""
        return None

    @abstractmethod
    def window(self, conn: psycopg.Connection[Any], since: Any) -> float:
        """Seconds from the first job start to the last job finish, past ``since``."""


def peer_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """Run one of the peer adapters' worker entry points in a fresh interpreter."""
    return [sys.executable, "-m", f"adapters.{module}", *args], {"PYTHONPATH": str(BENCH_DIR)}
