"""The process executor: a pool of child processes for ``Job(executor="process")`` types.

``serve`` keeps ``POEL_PROCESSES`` children (:mod:`poel_host.worker.child`), started before
they are needed. The pool is also the producer's lane for process job types. Each job runs
on a greenlet that sends it to a child and waits cooperatively on the child's pipe, so
claims, leases, ``/health`` and greenlet jobs go on while children compute.

- **Capacity.** The lane claims only for ready, idle children, so a claimed job does not
  wait for one, except while its jobs are short: once the children's recent jobs took
  under ``AHEAD_BUDGET_S`` on average, each busy child also has up to that much work
  claimed ahead (at most ``AHEAD_MAX`` jobs), taken by the first child that frees. Short
  jobs then never wait for a claim's round trip, and claims take several rows; long jobs
  are never claimed ahead. A job claimed ahead that finds no child within
  ``AHEAD_WAIT_S`` (a long job arrived among short ones) goes back to the queue, its
  attempt not counted, and claiming ahead stops until short jobs are seen again.

- A job past its timeout has its child stopped (SIGTERM, a short grace, SIGKILL) and
  replaced; the attempt fails ``timed out after Ns``.
- A child that dies (a segfault, ``os._exit``, the OOM killer) fails only its attempt, with
  the cause, and is replaced.
- A child is replaced after ``POEL_PROCESS_MAX_JOBS`` jobs, or once a job leaves it past
  ``POEL_PROCESS_MAX_RSS_MB``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.queue
import gevent.subprocess

from poel_host.backoff import pause
from poel_host.plugins import Plugins
from poel_host.settings import Settings
from poel_host.worker.child import PLUGINS_VARIABLE
from poel_host.worker.children import ChildDied, ChildProcess
from poel_host.worker.executor import Ran
from poel_host.worker.held import HANDING_BACK, HeldJob

START_TIMEOUT_S = 60.0
AHEAD_BUDGET_S = 0.010  # work claimed ahead per busy child, at the recent jobs' pace
AHEAD_MAX = 16  # jobs claimed ahead per busy child
AHEAD_WAIT_S = 1.0  # the longest a job claimed ahead waits for a child
PACE_WEIGHT = 0.2  # each job's share of the recent pace (an exponential moving average)


class ProcessPool:
    """The children, and the lane that claims process jobs for them (the same interface
    as :class:`~poel_host.worker.runners.Runners`)."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        run: Callable[[HeldJob], None],
        *,
        hand_back: Callable[[HeldJob], None],
        log: Any,
    ) -> None:
        self.settings = settings
        self.size = settings.processes
        self.run_item = run
        self.hand_back = hand_back
        self.log = log
        self.env = {**os.environ, **settings.as_environment()}
        self.env[PLUGINS_VARIABLE] = json.dumps(
            [[p.name, p.module] for p in plugins.loaded if p.module is not None]
        )
        self.idle: gevent.queue.Queue[ChildProcess] = gevent.queue.Queue()
        self.busy: set[ChildProcess] = set()
        self.counts: collections.Counter[str] = collections.Counter()  # started, recycled...
        self._reserved = 0
        self._jobs: set[gevent.Greenlet] = set()
        self._room = gevent.event.Event()  # a child became free
        self._empty = gevent.event.Event()
        self._empty.set()
        self._starting: set[gevent.Greenlet] = set()
        self._closing = False
        self._cancelling = False
        self._taken: dict[int, ChildProcess] = {}  # job id -> the child it waited for
        self.pace = float("inf")  # recent seconds a job in a child; inf: not known to be short

    # Children ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the children (in the background; each joins ``idle`` when ready)."""
        for _ in range(self.size - len(self.busy) - self.idle.qsize() - len(self._starting)):
            self._replace()

    def _replace(self) -> None:
        if not self._closing:
            starter = gevent.spawn(self._start_one)
            self._starting.add(starter)
            starter.link(self._starting.discard)

    def _start_one(self) -> None:
        failures = 0
        while not self._closing:
            child = ChildProcess(self.env, log=self.log)
            try:
                with gevent.Timeout(START_TIMEOUT_S):
                    ready = child.receive()
                if "ready" in ready:
                    self.counts["started"] += 1
                    self.idle.put(child)
                    self._room.set()
                    return
                reason = f"unexpected first message {ready!r}"
            except (ChildDied, gevent.Timeout) as exc:
                reason = str(exc) if isinstance(exc, ChildDied) else "did not start in time"
            child.stop()
            failures += 1
            self.log.error(
                "worker process failed to start", reason=reason, retry_in=pause(failures)
            )
            gevent.sleep(pause(failures))

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Wait until every child is ready (the test kit's run_once); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.idle.qsize() + len(self.busy) < self.size:
            if time.monotonic() > deadline:
                return False
            self._room.clear()
            self._room.wait(0.1)
        return True

    def close(self) -> None:
        """Stop every child (the end of the drain) and the starters."""
        self._closing = True
        gevent.killall(list(self._starting), timeout=5)
        children = [*self.busy]
        while not self.idle.empty():
            children.append(self.idle.get_nowait())
        gevent.joinall([gevent.spawn(child.stop) for child in children], timeout=10)

    def cancel_all(self) -> None:
        """Ask every running handler to stop (``ctx.cancelled``): the shutdown's grace ran out."""
        self._cancelling = True  # and jobs waiting for a child start no more
        for child in list(self.busy):
            with contextlib.suppress(ChildDied):  # its job's greenlet learns that itself
                child.send({"cancel": True})

    # Running one job --------------------------------------------------------------------

    def execute(self, entry: HeldJob, seconds: float) -> Ran:
        """Run the held job in a child; what happened (the executor decides the outcome)."""
        row = entry.row
        child = self._taken.pop(entry.id)
        self.busy.add(child)
        sent = time.monotonic()
        try:
            child.send(
                {
                    "job": {
                        "id": row["id"],
                        "job_type": row["job_type"],
                        "payload": row["payload"],
                        "attempt": row["attempts"],
                        "max_attempts": row["max_attempts"],
                        "queue": row["queue"],
                        "enqueued_at": row["created_at"].isoformat(),
                        "timeout_s": max(0.0, entry.deadline - time.monotonic()),
                    }
                }
            )
            with gevent.Timeout(max(0.0, entry.deadline - time.monotonic())):
                message = child.receive()
        except gevent.Timeout:
            self.pace = float("inf")
            self.counts["timed_out"] += 1
            self._discard(child, "timed out")
            return Ran(f"timed out after {seconds:g}s")
        except ChildDied as exc:
            self.counts["crashed"] += 1
            self._discard(child, "died")
            return Ran(f"worker process died: {exc}")
        except BaseException:  # GreenletExit: the drain ran out of time; the job goes back
            self._discard(child, "stopped by the shutdown")
            raise
        done = message["done"]
        took = time.monotonic() - sent
        known = self.pace != float("inf")
        self.pace = self.pace + PACE_WEIGHT * (took - self.pace) if known else took
        self._finished(child, done)
        return Ran(
            done["error"],
            stopped=done["stopped"],
            final=bool(done.get("final")),
            traceback=done.get("traceback"),
        )

    def _finished(self, child: ChildProcess, done: dict[str, Any]) -> None:
        self.busy.discard(child)
        child.jobs_done += 1
        rss_mb = done.get("rss_kb", 0) / 1024
        s = self.settings
        if s.process_max_jobs and child.jobs_done >= s.process_max_jobs:
            self._recycle(child, f"after {child.jobs_done} jobs (POEL_PROCESS_MAX_JOBS)")
        elif s.process_max_rss_mb and rss_mb > s.process_max_rss_mb:
            self._recycle(child, f"at {rss_mb:.0f} MB (POEL_PROCESS_MAX_RSS_MB)")
        else:
            self.idle.put(child)
            self._room.set()

    def _recycle(self, child: ChildProcess, why: str) -> None:
        self.counts["recycled"] += 1
        self.log.info("worker process recycled", pid=child.pid, reason=why)
        gevent.spawn(child.exit)
        self._replace()

    def _discard(self, child: ChildProcess, why: str) -> None:
        self.busy.discard(child)
        self.log.warning("worker process replaced", pid=child.pid, reason=why)
        gevent.spawn(child.stop)
        self._replace()

    # The lane (the producer's view) -----------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs) + self._reserved

    def ahead(self) -> int:
        """Jobs claimed ahead per busy child now: none unless recent jobs were short."""
        if self.pace >= AHEAD_BUDGET_S:
            return 0
        return min(AHEAD_MAX, int(AHEAD_BUDGET_S / max(self.pace, 1e-6)))

    def capacity(self) -> int:
        """Jobs the lane may hold: one a ready child, and those claimed ahead."""
        ready = len(self.busy) + len(self._taken) + int(self.idle.qsize())
        return ready * (1 + self.ahead())

    def free_count(self) -> int:
        capacity = self.capacity()
        free = capacity - len(self._jobs) - self._reserved
        if capacity > self.size and free < capacity // 2:
            # Claiming ahead: wait until half of it is free, so that a claim takes many
            # rows (a statement costs serve and the database about the same for 1 or 20).
            return 0
        return free

    def wait_available(self, timeout: float | None = None) -> None:
        self._room.clear()
        if self.free_count() <= 0:
            self._room.wait(timeout)

    def reserve(self, n: int) -> None:
        self._reserved += n
        self._empty.clear()

    def unreserve(self, n: int) -> None:
        self._reserved -= n
        self._check_empty()

    def submit(self, entry: HeldJob) -> None:
        job = gevent.spawn(self._job, entry)
        self._jobs.add(job)
        self._empty.clear()
        job.link(self._job_done)

    def _job(self, entry: HeldJob) -> None:
        """Wait for a child (at once unless claimed ahead), then run the job with it."""
        try:
            child = self.idle.get(timeout=AHEAD_WAIT_S)
        except gevent.queue.Empty:
            # Every child is held up by a job much longer than the recent ones.
            self.pace = float("inf")
            self.counts["handed_back"] += 1
            entry.ctx.log.info("job handed back: no worker process free", waited_s=AHEAD_WAIT_S)
            self.hand_back(entry)
            return
        except gevent.GreenletExit:
            entry.move(HANDING_BACK)  # the drain ran out of time before a child freed
            raise
        if self._cancelling:  # the drain's grace ran out while this job waited
            entry.move(HANDING_BACK)
            self.idle.put(child)
            return
        self._taken[entry.id] = child
        try:
            self.run_item(entry)
        finally:
            unused = self._taken.pop(entry.id, None)
            if unused is not None:  # the job ended before it reached a child (a bad payload)
                self.idle.put(unused)
                self._room.set()

    def _job_done(self, job: gevent.Greenlet) -> None:
        self._jobs.discard(job)
        self._room.set()
        self._check_empty()

    def _check_empty(self) -> None:
        if not self._jobs and not self._reserved:
            self._empty.set()

    def join(self, timeout: float | None = None) -> bool:
        return bool(self._empty.wait(timeout))

    def kill(self, timeout: float | None = None) -> list[HeldJob]:
        """Stop the jobs (GreenletExit: each running one stops its child, each waiting one
        is marked released)."""
        gevent.killall(list(self._jobs), timeout=timeout)
        return []

    # Metrics ----------------------------------------------------------------------------

    def gauges(self) -> dict[str, tuple[str, int]]:
        busy, idle = len(self.busy), int(self.idle.qsize())
        return {
            "poel_processes_busy": ("Worker processes running a job.", busy),
            "poel_processes_idle": ("Worker processes ready for a job.", idle),
            "poel_processes": ("POEL_PROCESSES.", self.size),
        }

    def counters(self) -> dict[str, tuple[str, int]]:
        counts = self.counts
        return {
            "poel_processes_started_total": ("Worker processes started.", counts["started"]),
            "poel_processes_recycled_total": (
                "Worker processes replaced after POEL_PROCESS_MAX_JOBS or past "
                "POEL_PROCESS_MAX_RSS_MB.",
                counts["recycled"],
            ),
            "poel_processes_crashed_total": (
                "Worker processes that died during a job.",
                counts["crashed"],
            ),
            "poel_processes_timed_out_total": (
                "Worker processes stopped because their job ran past its timeout.",
                counts["timed_out"],
            ),
            "poel_processes_handed_back_total": (
                "Jobs claimed ahead for a busy worker process that none took in time; "
                "handed back to the queue.",
                counts["handed_back"],
            ),
        }
