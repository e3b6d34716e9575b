"""Rescuing jobs whose worker died: its heartbeat stopped (or their own lease expired).

A running job is held by its worker's heartbeat in the registry; it is lost once that
heartbeat is older than the worker's lease (``POEL_LEASE_MS``), or once the worker is not
in the registry at all; a job given up past its timeout, or claimed with a lease of its own
(the test kit's ``run_job``, workers of earlier versions), is lost once that lease expires.

Every worker rescues, at the lease keeper's pace: a rescued job is queued again after a
backoff (``POEL_RETRY_BACKOFF_MS`` doubled each attempt, with jitter) or, on its last
attempt, failed, with the lost attempt in its error history. The backoff is what keeps a
job that kills its worker (out of memory, a segfault, ``os._exit``) from taking down the
next worker at once, and the next: it ends in the dead letter after its attempts, with a
message that says its worker was lost every time. ``FOR UPDATE SKIP LOCKED`` keeps
workers rescuing at the same moment from doing it twice.

The same pass looks after the registry of workers: a worker whose heartbeat stopped for
longer than its lease is marked gone (its jobs are rescued by the statement above), and
one gone for ``POEL_GONE_WORKERS_KEEP_S`` is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poel_host.store import Store
from poel_host.worker.supervisor import Periodic


class Rescuer(Periodic):
    name = "rescuer"

    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        on_rescued: Callable[[], None],
        log: Any,
        gone_workers_keep_s: float = 3600.0,
        backoff_ms: tuple[int, int] = (1_000, 3_600_000),
    ) -> None:
        super().__init__()
        self.store = store
        self.interval = interval
        self.retry_max_s = interval
        self.gone_workers_keep_s = gone_workers_keep_s
        self.backoff_ms = backoff_ms  # (base, max) of a rescued job's delay
        self.on_rescued = on_rescued  # wakes the producer: the rescued jobs are due
        self.log = log

    failed = "rescuing expired jobs failed"

    def first_wait(self) -> float:
        return self.interval

    def step(self) -> float:
        self.rescue()
        self.expire_workers()
        return self.interval

    def rescue(self) -> int:
        base_ms, max_ms = self.backoff_ms
        rows = self.store.recover_expired(base_ms=base_ms, max_ms=max_ms)
        for row in rows:
            self.log.warning("job lease expired; worker lost", jobId=row["id"], state=row["state"])
        if rows:
            self.on_rescued()
        return len(rows)

    def expire_workers(self) -> None:
        for row in self.store.expire_workers(keep_s=self.gone_workers_keep_s):
            fields = {
                "owner": row["owner"],
                "host": row["host"],
                "pid": row["pid"],
                "last_heartbeat": row["heartbeat_at"].isoformat(),
            }
            if row["change"] == "gone":
                self.log.warning("worker gone: its heartbeat stopped", **fields)
            else:
                self.log.info("gone worker removed from the registry", **fields)
