"""The process executor: the lane that claims ``Job(executor="process")`` jobs for a pool
of child processes (:mod:`poel_host.worker.child_pool`).

``serve`` keeps ``POEL_PROCESSES`` children, started before they are needed. Each job runs
on a greenlet that sends it to a child and waits cooperatively on the child's pipe, so
claims, leases, ``/health`` and greenlet jobs go on while children compute. What happens
to a child (timeouts, crashes, recycling, children that cannot start) is the pool's.

- **Capacity.** The lane claims only for ready, idle children, so a claimed job does not
  wait for one, except while its jobs are short: once the children's recent jobs took
  under ``AHEAD_BUDGET_S`` on average, each busy child also has up to that much work
  claimed ahead (at most ``AHEAD_MAX`` jobs), taken by the first child that frees. Short
  jobs then never wait for a claim's round trip, and claims take several rows; long jobs
  are never claimed ahead. A job claimed ahead that finds no child within
  ``AHEAD_WAIT_S`` (a long job arrived among short ones) goes back to the queue, its
  attempt not counted, and claiming ahead stops until short jobs are seen again.
  Which slots are taken is counted as for every lane (``slots.py``); only how many
  there are (``capacity``) and when a claim may start (``free_count``) are this lane's.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import gevent
import gevent.queue

from poel_host.plugins import Plugins
from poel_host.settings import Settings
from poel_host.worker import process_readings
from poel_host.worker.child_pool import START_TIMEOUT_S, Children
from poel_host.worker.children import ChildProcess
from poel_host.worker.held import HANDING_BACK, HeldJob
from poel_host.worker.outcomes import Ran
from poel_host.worker.slots import Slots

AHEAD_BUDGET_S = 0.010  # work claimed ahead per busy child, at the recent jobs' pace
AHEAD_MAX = 16  # jobs claimed ahead per busy child
AHEAD_WAIT_S = 1.0  # the longest a job claimed ahead waits for a child
PACE_WEIGHT = 0.2  # each job's share of the recent pace (an exponential moving average)


class ProcessPool:
    """The lane that claims process jobs for the children (the same interface as
    :class:`~poel_host.worker.runners.Runners`)."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        run: Callable[[HeldJob], None],
        *,
        hand_back: Callable[[HeldJob], None],
        log: Any,
        problems: MutableMapping[str, str] | None = None,
    ) -> None:
        self.children = Children(
            settings, plugins, problems=problems if problems is not None else {}, log=log
        )
        self.size = self.children.size
        self.run_item = run
        self.hand_back = hand_back
        self.log = log
        # Taken from submit() until the job's greenlet ended; ``room`` is the children's,
        # set also when a child becomes free or ready (capacity() grows).
        self.slots = Slots(room=self.children.room)
        self._jobs: set[gevent.Greenlet] = set()  # for kill()
        self._taken: dict[int, ChildProcess] = {}  # job id -> the child it waited for
        self.pace = float("inf")  # recent seconds a job in a child; inf: not known to be short

    # The children (see child_pool) ------------------------------------------------------

    def start(self) -> None:
        self.children.start()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        return self.children.wait_ready(timeout)

    def close(self) -> None:
        self.children.close()

    def cancel_all(self) -> None:
        self.children.cancel_all()

    def gauges(self) -> dict[str, tuple[str, int]]:
        return process_readings.gauges(self.children)

    def counters(self) -> dict[str, tuple[str, int]]:
        return process_readings.counters(self.children)

    # Running one job --------------------------------------------------------------------

    def execute(self, entry: HeldJob, seconds: float) -> Ran:
        """Run the held job in its child; what happened (the executor decides the outcome)."""
        ran, took = self.children.run(self._taken.pop(entry.id), entry, seconds)
        if took is not None:  # a job's time in its child (inf: it timed out)
            known = self.pace != float("inf")
            self.pace = self.pace + PACE_WEIGHT * (took - self.pace) if known else took
        return ran

    # The lane (the producer's view) -----------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    def running(self) -> int:
        """Jobs sent to a child or waiting for one (a claim in flight runs nothing)."""
        return self.slots.items

    def ahead(self) -> int:
        """Jobs claimed ahead per busy child now: none unless recent jobs were short."""
        if self.pace >= AHEAD_BUDGET_S:
            return 0
        return min(AHEAD_MAX, int(AHEAD_BUDGET_S / max(self.pace, 1e-6)))

    def capacity(self) -> int:
        """Jobs the lane may hold: one a ready child, and those claimed ahead."""
        children = self.children
        ready = len(children.busy) + len(self._taken) + int(children.idle.qsize())
        return ready * (1 + self.ahead())

    def free_count(self) -> int:
        capacity = self.capacity()
        free = self.slots.free_count(capacity)
        if capacity > self.size and free < capacity // 2:
            # Claiming ahead: wait until half of it is free, so that a claim takes many
            # rows (a statement costs serve and the database about the same for 1 or 20).
            return 0
        return free

    def wait_available(self, timeout: float | None = None) -> None:
        self.slots.wait_room(self.free_count, timeout)

    def reserve(self, n: int) -> None:
        self.slots.reserve(n)

    def unreserve(self, n: int) -> None:
        self.slots.unreserve(n)

    def submit(self, entry: HeldJob) -> None:
        self.slots.take()
        job = gevent.spawn(self._job, entry)
        self._jobs.add(job)
        # A link, not a ``finally`` in _job: it runs also for a job killed before it began.
        job.link(self._job_done)

    def _job(self, entry: HeldJob) -> None:
        """Wait for a child (at once unless claimed ahead), then run the job with it."""
        try:
            child = self.children.take(timeout=AHEAD_WAIT_S)
        except gevent.queue.Empty:
            # Every child is held up by a job much longer than the recent ones.
            self.pace = float("inf")
            self.children.counts["handed_back"] += 1
            entry.ctx.log.info("job handed back: no worker process free", waited_s=AHEAD_WAIT_S)
            self.hand_back(entry)
            return
        except gevent.GreenletExit:
            entry.move(HANDING_BACK)  # the drain ran out of time before a child freed
            raise
        if self.children.cancelling:  # the drain's grace ran out while this job waited
            entry.move(HANDING_BACK)
            self.children.put(child)
            return
        self._taken[entry.id] = child
        try:
            self.run_item(entry)
        finally:
            unused = self._taken.pop(entry.id, None)
            if unused is not None:  # the job ended before it reached a child (a bad payload)
                self.children.put(unused)

    def _job_done(self, job: gevent.Greenlet) -> None:
        """The job's greenlet has ended: its child was given back or is being stopped."""
        self._jobs.discard(job)
        self.slots.finished()

    def join(self, timeout: float | None = None) -> bool:
        return self.slots.join(timeout)

    def kill(self, timeout: float | None = None) -> list[HeldJob]:
        """Stop the jobs (GreenletExit: each running one stops its child, each waiting one
        is marked released)."""
        gevent.killall(list(self._jobs), timeout=timeout)
        return []
