"""Deleting finished jobs past their retention (``POEL_RETAIN_*_HOURS``), and finished
workflows past theirs.

Most finished jobs are in the history by then (:mod:`poel_host.worker.archiver`): its
partitions past the retention are dropped whole. Row by row go only the dead letter
(``jobs_dead``, when ``POEL_RETAIN_FAILED_HOURS`` is set), the history's default
partition, and finished jobs still in the jobs table (finished before an upgrade). A
finished workflow goes with its dependencies once its steps' retention has passed
(``prune_workflows`` in queries.sql says how long); a workflow counts as many rows as it
has steps.

On its own greenlet and its own pooled connection, so that a prune never delays a lease
renewal or a claim. Each pass is bounded (``PASS_ROWS``, in statements of ``BATCH`` rows):
a backlog of a million expired rows is worked off pass by pass, a second apart, instead of
in one long sweep.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.archiver import partition_width_s
from poel_host.worker.supervisor import Periodic, in_batches

INTERVAL_S = 300.0  # between passes once the backlog is gone
BACKLOG_PAUSE_S = 1.0  # between passes while a pass comes back full
FIRST_PASS_S = 10.0  # after start-up
BATCH = 1000  # rows one DELETE takes
PASS_ROWS = 10_000  # rows one pass deletes at most


class Pruner(Periodic):
    name = "pruner"

    def __init__(self, store: Store, settings: Settings, *, log: Any) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.log = log

    failed = "pruning finished jobs failed"
    retry_max_s = INTERVAL_S / 10

    def first_wait(self) -> float:
        # Never later than a few lease intervals after start-up, nor sooner than a
        # second (a worker that restarts in a loop should not spend its life pruning).
        return max(1.0, min(FIRST_PASS_S, 10 * self.settings.lease_ms / 3000))

    def step(self) -> float:
        if self.prune() >= PASS_ROWS:
            return BACKLOG_PAUSE_S
        # No later than a history partition's width after it is past the retention.
        return min(INTERVAL_S, partition_width_s(self.settings.retain_succeeded_hours))

    def prune(self) -> int:
        """One pass: drop the history's partitions past the retention, then delete up to
        PASS_ROWS finished jobs past their retention, row by row, where they are not in a
        partition, and finished workflows past theirs with what is left of the PASS_ROWS
        (returns how many rows)."""
        s = self.settings
        dropped = self.store.drop_done_partitions(succeeded_hours=s.retain_succeeded_hours)
        if dropped:
            self.log.info("history partitions dropped", partitions=dropped)
        deleted = 0
        for prune in (self.store.prune_finished, self.store.prune_history):
            deleted += in_batches(
                functools.partial(
                    _batch_of,
                    prune,
                    succeeded_hours=s.retain_succeeded_hours,
                    failed_hours=s.retain_failed_hours,
                ),
                batch=BATCH,
                limit=PASS_ROWS - deleted,
            )
        if deleted:
            self.log.info("finished jobs pruned", jobs=deleted)
        return deleted + self.prune_workflows(limit=PASS_ROWS - deleted)

    def prune_workflows(self, *, limit: int) -> int:
        """Delete finished workflows past their retention, up to ``limit`` steps' worth
        (returns how many steps they had)."""
        s = self.settings
        workflows = 0

        def batch(n: int) -> int:
            nonlocal workflows
            count, steps = self.store.prune_workflows(
                succeeded_hours=s.retain_succeeded_hours,
                failed_hours=s.retain_failed_hours,
                batch=n,
            )
            workflows += count
            return steps

        steps = in_batches(batch, batch=BATCH, limit=limit)
        if workflows:
            self.log.info("finished workflows pruned", workflows=workflows, steps=steps)
        return steps


def _batch_of(
    prune: Callable[..., int], n: int, *, succeeded_hours: float, failed_hours: float | None
) -> int:
    """One batch of ``n`` rows of a prune (in_batches passes the size)."""
    return prune(succeeded_hours=succeeded_hours, failed_hours=failed_hours, batch=n)
