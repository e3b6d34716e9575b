"""Moving finished jobs out of the jobs table, into the history (migration 0013).

The jobs table is the job path's: claims, leases, outcomes and the promoter read and write
it, so it should hold what is live, not a day of finished jobs. A finished job stays there
``POEL_ARCHIVE_AFTER_S`` (a minute by default: long enough for whoever waits on it to read
its outcome where it was), then each worker's archiver moves it, in one statement per
batch, into ``jobs_history``: succeeded and cancelled jobs into the partition of their
finish time (``partition_width_s``: a minute to a day, by ``POEL_RETAIN_SUCCEEDED_HOURS``),
failed ones into ``jobs_dead``. Retention then drops whole partitions (the pruner), which writes no
WAL a row and leaves nothing to vacuum.

The partitions a finish time needs are made ahead (the last one, the current one and
``AHEAD`` more), at most every ``PARTITIONS_EVERY_S``; a job no partition covers (it
finished before an upgrade, or while no worker ran) lands in the default partition, pruned
row by row. The first pass waits a few seconds: a fleet starting at once does not make
its partitions all in the same moment. On its own greenlet and pooled connection, never
on the job path: the brief lock that attaching a partition takes on the history stops no
claim and no outcome.
A full pass is followed at once by the next, so a burst is worked off at the rate the
database can move rows, a batch at a time.
"""

from __future__ import annotations

import time
from typing import Any

from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.supervisor import Periodic, in_batches

BATCH = 2_000  # jobs one statement moves
PASS_ROWS = 20_000  # jobs one pass moves at most
AHEAD = 3  # partitions made past the current one
FIRST_PASS_S = 2.0  # after start-up
PARTITIONS_EVERY_S = 30.0  # between checks that the partitions exist (AHEAD covers it)


WIDTHS_S = (60, 300, 900, 3600, 86400)  # a partition's width: a minute to a day


def partition_width_s(retain_succeeded_hours: float) -> int:
    """The width of the history's partitions: the widest of WIDTHS_S within a quarter of
    the retention (at least a minute). A partition is dropped once its newest job is past
    the retention, so the history holds at most a width more than it: a quarter more at
    worst, and between 4 and about 50 partitions (24 hours: 1-hour partitions; 7 days:
    1-day ones; 1 hour: 15-minute ones)."""
    quarter_s = retain_succeeded_hours * 3600 / 4
    return max([w for w in WIDTHS_S if w <= quarter_s], default=WIDTHS_S[0])


class Archiver(Periodic):
    name = "archiver"
    failed = "archiving finished jobs failed"

    def __init__(self, store: Store, settings: Settings, *, log: Any) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.log = log
        self.interval = min(10.0, max(1.0, settings.archive_after_s / 2))
        self.retry_max_s = self.interval
        self._partitions_at: float | None = None  # when the partitions were last made

    def first_wait(self) -> float:
        return min(FIRST_PASS_S, self.interval)

    def step(self) -> float:
        self.make_partitions()
        return 0.0 if self.archive() >= PASS_ROWS else self.interval

    def make_partitions(self, *, force: bool = False) -> int:
        """Make the partitions finish times need, unless done within PARTITIONS_EVERY_S."""
        now = time.monotonic()
        last = self._partitions_at
        if not force and last is not None and now - last < PARTITIONS_EVERY_S:
            return 0
        width_s = partition_width_s(self.settings.retain_succeeded_hours)
        made = self.store.make_done_partitions(back_s=width_s, width_s=width_s, ahead=AHEAD)
        self._partitions_at = now
        if made:
            self.log.info("history partitions made", partitions=made)
        return made

    def archive(self) -> int:
        """One pass: move up to PASS_ROWS finished jobs into the history."""
        s = self.settings
        moved = in_batches(
            lambda n: self.store.archive_finished(
                after_s=s.archive_after_s, succeeded_hours=s.retain_succeeded_hours, batch=n
            ),
            batch=BATCH,
            limit=PASS_ROWS,
        )
        if moved:
            self.log.debug("finished jobs archived", jobs=moved)
        return moved
