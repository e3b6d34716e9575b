"""Periodic jobs: enqueue each cron slot once, however many workers run.

Every worker runs a scheduler for the scheduled job types it has loaded. For each type it
enqueues the latest slot that is due (not every slot it missed while down), through one
statement that inserts the slot into ``schedule_slots`` (primary key: job type and slot)
and the job only if that insert happened. No leader election, no per-process timers: the
database's uniqueness is the guarantee.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import gevent
import psycopg
import psycopg_pool

from poel_host.errors import one_line
from poel_host.jobs import Job
from poel_host.queries import Queries
from poel_host.schedules import latest_slot, next_slot

MAX_SLEEP_S = 30.0
_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


class Scheduler:
    def __init__(
        self,
        jobs: list[Job],
        pool: psycopg_pool.ConnectionPool[Any],
        queries: Queries,
        *,
        log: Any,
    ) -> None:
        self.jobs = [job for job in jobs if job.schedule]
        self.pool = pool
        self.queries = queries
        self.log = log
        self.done: dict[str, dt.datetime] = {}  # latest slot handled per job type

    def run(self) -> None:
        """Loop forever (the worker kills this greenlet at shutdown)."""
        if not self.jobs:
            return
        self.prune()
        while True:
            try:
                self.tick(now())
            except _DB_ERRORS as exc:
                self.log.warning("scheduling failed; will retry", error=one_line(exc))
                gevent.sleep(1.0)
                continue
            gevent.sleep(self.seconds_to_next(now()))

    def tick(self, at: dt.datetime) -> list[int]:
        """Enqueue the latest due slot of each scheduled job not handled yet; returns new ids."""
        created = []
        for job in self.jobs:
            assert job.schedule is not None
            slot = latest_slot(job.schedule, at)
            if self.done.get(job.type) == slot:
                continue
            with self.pool.connection(timeout=5) as conn:
                row = conn.execute(
                    self.queries["enqueue_slot"],
                    {
                        "job_type": job.type,
                        "slot": slot,
                        "priority": job.priority,
                        "queue": job.queue,
                        "max_attempts": job.max_attempts,
                    },
                ).fetchone()
            self.done[job.type] = slot
            if row is not None:
                created.append(row["id"])
                self.log.info(
                    "periodic job enqueued",
                    jobId=row["id"],
                    jobType=job.type,
                    slot=slot.isoformat(),
                )
        return created

    def seconds_to_next(self, at: dt.datetime) -> float:
        upcoming = min(next_slot(job.schedule or "", at) for job in self.jobs)
        return max(0.01, min(MAX_SLEEP_S, (upcoming - at).total_seconds()))

    def prune(self) -> None:
        try:
            with self.pool.connection(timeout=5) as conn:
                conn.execute(self.queries["prune_slots"])
        except _DB_ERRORS as exc:
            self.log.warning("pruning schedule slots failed", error=one_line(exc))


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
