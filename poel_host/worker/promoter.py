"""Making future jobs claimable once they are due.

A queued job whose ``run_at`` is in the future (a delayed enqueue, a retry's backoff, a
rescue's) is not ``ready``: claims read only ready jobs, so that no number of future jobs,
whatever their priorities, slows a claim (see ``claim_jobs`` and migration 0010). Every
worker's promoter marks ready the jobs that have become due, every poll interval (at
once again while a pass comes back full), and wakes the claim loops when it did: a job
due now is claimed within a poll interval of its ``run_at``, as it was when claims looked
for due jobs themselves. Two workers promoting at once skip each other's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poel_host.store import Store
from poel_host.worker.supervisor import Periodic

BATCH = 1000  # jobs one pass promotes at most


class Promoter(Periodic):
    name = "promoter"
    failed = "making due jobs ready failed"

    def __init__(
        self, store: Store, *, interval: float, on_promoted: Callable[[], None], log: Any
    ) -> None:
        super().__init__()
        self.store = store
        self.interval = interval
        self.retry_max_s = max(interval, 1.0)
        self.on_promoted = on_promoted  # wakes the producer: the promoted jobs are due
        self.log = log

    def step(self) -> float:
        promoted = self.promote()
        return 0.0 if promoted >= BATCH else self.interval

    def promote(self) -> int:
        promoted = self.store.promote_due(limit=BATCH)
        if promoted:
            self.on_promoted()
        return promoted
