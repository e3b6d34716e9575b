"""Queue depths for ``/metrics``: how many jobs wait, by queue and job type, and for how long.

One indexed query every ``POEL_QUEUE_METRICS_INTERVAL_S`` (``queue_depths`` in the SQL:
index-only reads of the queued jobs' own partial index), on its own greenlet and pooled
connection; a scrape only reads the last answer, so a busy Prometheus adds no load to the
database. Each (queue, job type) is counted up to DEPTH_CAP jobs, so that the query costs
about a millisecond a group however large the backlog (counting a million queued jobs
would take a fifth of a second, every few seconds, on every worker); the oldest job's age
is exact. A queue and type seen once stays in the answer, at 0 once emptied, so that a
gauge an alert watches goes to 0 instead of vanishing.
"""

from __future__ import annotations

from typing import Any

from poel_host.store import Store
from poel_host.worker.metrics import Metrics
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

    failed = "measuring queue depths failed"

    def step(self) -> float:
        self.measure()
        return self.interval

    def measure(self) -> None:
        depths = {key: (0, 0.0) for key in self.metrics.queues}
        for row in self.store.queue_depths(cap=DEPTH_CAP):
            depths[row["queue"], row["job_type"]] = (int(row["depth"]), float(row["oldest_s"]))
        self.metrics.queues = depths
