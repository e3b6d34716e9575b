"""Queue depths for ``/metrics``: how many jobs wait, by queue and job type, and for how
long; and, beside them, the jobs table as the server sees it.

One indexed query every ``POEL_QUEUE_METRICS_INTERVAL_S`` (``queue_depths`` in the SQL:
index-only reads of the queued jobs' own partial index), on its own greenlet and pooled
connection; a scrape only reads the last answer, so a busy Prometheus adds no load to the
database. Each (queue, job type) is counted up to DEPTH_CAP jobs, so that the query costs
about a millisecond a group however large the backlog (counting a million queued jobs
would take a fifth of a second, every few seconds, on every worker); the oldest job's age
is exact. A queue and type seen once stays in the answer, at 0 once emptied, so that a
gauge an alert watches goes to 0 instead of vanishing.

After it, the same pass reads the server's statistics of the jobs table
(``jobs_table_stats``: live and dead row versions, the last vacuum, autovacuum runs, the
table's and its indexes' sizes), which say whether vacuum keeps up with the queue's
churn. It reads statistics views and file sizes, not the table: well under a
millisecond. A server that refuses it (a role without access to the statistics views)
leaves those gauges empty, said once at debug; the queue depths go on.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from poel_host.errors import one_line
from poel_host.store import Store
from poel_host.worker.metrics import JobsTable, Metrics
from poel_host.worker.supervisor import Periodic

DEPTH_CAP = 10_000  # jobs counted per queue and type at most


class QueueDepths(Periodic):
    name = "queue depths"

    def __init__(self, store: Store, metrics: Metrics, *, interval: float, log: Any) -> None:
        super().__init__()
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.retry_max_s = interval
        self.log = log
        self.table_refused = False  # the statistics were refused once (said at debug)

    failed = "measuring queue depths failed"

    def step(self) -> float:
        self.measure()
        self.measure_table()
        return self.interval

    def measure(self) -> None:
        depths = {key: (0, 0.0) for key in self.metrics.queues}
        for row in self.store.queue_depths(cap=DEPTH_CAP):
            depths[row["queue"], row["job_type"]] = (int(row["depth"]), float(row["oldest_s"]))
        self.metrics.queues = depths

    def measure_table(self) -> None:
        """The jobs table's statistics into ``metrics.jobs_table`` (the database away
        raises DatabaseUnavailable, as ``measure`` does)."""
        try:
            row = self.store.jobs_table_stats()
        except psycopg.Error as exc:  # refused, not unavailable (that is DatabaseUnavailable)
            if not self.table_refused:
                self.table_refused = True
                self.log.debug("jobs table statistics not readable", error=one_line(exc))
            self.metrics.jobs_table = None
            return
        self.metrics.jobs_table = None if row is None else jobs_table(row)


def jobs_table(row: dict[str, Any]) -> JobsTable:
    """A ``jobs_table_stats`` row as the metrics keep it."""
    age = row["last_vacuum_age_s"]
    return JobsTable(
        live_tuples=int(row["live_tuples"]),
        dead_tuples=int(row["dead_tuples"]),
        last_vacuum_age_s=math.nan if age is None else float(age),
        autovacuums=int(row["autovacuums"]),
        table_bytes=int(row["table_bytes"]),
        index_bytes={str(name): int(size) for name, size in row["index_bytes"].items()},
    )
