"""Periodic jobs: enqueue each cron slot once, however many workers run.

Every worker runs a scheduler for the scheduled job types it has loaded. For each type it
enqueues the latest slot that is due (not every slot it missed while down), through one
statement that inserts the slot into ``schedule_slots`` (primary key: job type and slot)
and the job only if that insert happened. No leader election, no per-process timers: the
database's uniqueness is the guarantee.

A scheduler that wakes late (a loaded machine, a pause of its process, a database blip)
while it runs also enqueues the slots it passed since the last one it handled, up to
``CATCH_UP_SLOTS`` of them, in order (each still once, whoever got there first): a slot is
not lost because every worker was a second late. More missed than that is a worker that
was down: only the latest is enqueued.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.jobs import Job
from poel_host.schedules import latest_slot, next_slot
from poel_host.store import Store
from poel_host.worker.supervisor import Periodic

MAX_SLEEP_S = 30.0
CATCH_UP_SLOTS = 10  # missed slots a late scheduler still enqueues


class Scheduler(Periodic):
    name = "scheduler"

    def __init__(self, jobs: list[Job], store: Store, *, log: Any) -> None:
        super().__init__()
        self.jobs = [job for job in jobs if job.schedule]
        self.store = store
        self.log = log
        self.done: dict[str, dt.datetime] = {}  # latest slot handled per job type

    failed = "scheduling failed; will retry"
    retry_max_s = 1.0

    def run(self) -> None:
        """Loop until killed at shutdown; return at once when no job type is scheduled."""
        if not self.jobs:
            return
        self.prune()
        super().run()

    def step(self) -> float:
        self.tick(now())
        return self.seconds_to_next(now())

    def tick(self, at: dt.datetime) -> list[int]:
        """Enqueue the due slots of each scheduled job not handled yet (the latest, and
        those a late wake passed); returns new ids."""
        created = []
        for job in self.jobs:
            for slot in self.due(job, at):
                job_id = self.store.enqueue_slot(
                    job_type=job.type,
                    slot=slot,
                    priority=job.priority,
                    queue=job.queue,
                    max_attempts=job.max_attempts,
                )
                self.done[job.type] = slot
                if job_id is not None:
                    created.append(job_id)
                    self.log.info(
                        "periodic job enqueued",
                        jobId=job_id,
                        jobType=job.type,
                        slot=slot.isoformat(),
                    )
        return created

    def due(self, job: Job, at: dt.datetime) -> list[dt.datetime]:
        """The slots of ``job`` to enqueue at ``at``, oldest first: the latest due one, and
        before it those passed since the last one handled when they are few (a late wake);
        none if the latest was handled."""
        assert job.schedule is not None
        latest = latest_slot(job.schedule, at)
        last = self.done.get(job.type)
        if last is not None and last >= latest:
            return []
        missed: list[dt.datetime] = []
        if last is not None:
            slot = next_slot(job.schedule, last)
            while slot < latest and len(missed) <= CATCH_UP_SLOTS:
                missed.append(slot)
                slot = next_slot(job.schedule, slot)
            if len(missed) > CATCH_UP_SLOTS:
                missed = []  # down, not late: the latest slot only
        return [*missed, latest]

    def seconds_to_next(self, at: dt.datetime) -> float:
        upcoming = min(next_slot(job.schedule or "", at) for job in self.jobs)
        return max(0.01, min(MAX_SLEEP_S, (upcoming - at).total_seconds()))

    def prune(self) -> None:
        try:
            self.store.prune_slots()
        except DatabaseUnavailable as exc:
            self.log.warning("pruning schedule slots failed", error=one_line(exc))


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
