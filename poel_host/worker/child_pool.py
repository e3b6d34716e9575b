"""The children of the process executor: starting them, handing them out, running one job
in one, and replacing them. (The lane that claims for them is :mod:`.processes`; one
child as serve sees it is :mod:`.children`.)

- A job past its timeout has its child stopped (SIGTERM, a short grace, SIGKILL, to the
  child's whole process group) and replaced; the attempt fails ``timed out after Ns``.
- A child that dies while its job runs (a segfault, ``os._exit``, the OOM killer) fails
  only that attempt, with the cause, and is replaced.
- A child that dies before it started its job (killed while idle, or before it read the
  job) is replaced and the job goes to another child, at no cost to it: the child says
  ``started`` before it runs any of the job's code, so serve knows which case it is.
- A child is replaced after ``POEL_PROCESS_MAX_JOBS`` jobs, or once a job leaves it past
  ``POEL_PROCESS_MAX_RSS_MB``.
- Children that cannot start (a plugin that fails to import only there) are retried with
  backoff; after ``UNHEALTHY_AFTER`` failures in a row the worker reports itself failing
  (``problems["processes"]``, which ``/health`` turns into a 503) with the child's own
  error line, until a child starts again.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import MutableMapping
from functools import partial
from typing import Any

import gevent
import gevent.event
import gevent.queue

from poel_host.backoff import pause
from poel_host.plugins import Plugins
from poel_host.settings import Settings
from poel_host.worker.cancels import CancelRequested
from poel_host.worker.child import PLUGINS_VARIABLE
from poel_host.worker.children import ChildDied, ChildProcess
from poel_host.worker.held import HeldJob
from poel_host.worker.outcomes import STOPPED, Ran

START_TIMEOUT_S = 60.0
UNHEALTHY_AFTER = 3  # a starter's failures in a row before the worker says it is failing
HANDOVERS = 3  # children tried for one job that each died before starting it
PROBLEM = "processes"  # the key in ``problems`` (a service name in /health's reason)


class NotStarted(Exception):
    """The child ended before it started the job: not the job's doing."""


class Children:
    """``POEL_PROCESSES`` children: ``idle`` ones, ``busy`` ones, and their starters."""

    def __init__(
        self, settings: Settings, plugins: Plugins, *, problems: MutableMapping[str, str], log: Any
    ) -> None:
        self.settings = settings
        self.size = settings.processes
        self.problems = problems
        self.log = log
        self.env = {**os.environ, **settings.as_environment()}
        self.env[PLUGINS_VARIABLE] = json.dumps(
            [[p.name, p.module] for p in plugins.loaded if p.module is not None]
        )
        self.idle: gevent.queue.Queue[ChildProcess] = gevent.queue.Queue()
        self.busy: set[ChildProcess] = set()
        self.counts: collections.Counter[str] = collections.Counter()  # started, recycled...
        self.room = gevent.event.Event()  # a child became free
        self.cancelling = False  # the drain's grace ran out: jobs not started yet start not
        self._starting: set[gevent.Greenlet] = set()
        self._closing = False

    # Starting ---------------------------------------------------------------------------

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
                    self._started()
                    self.put(child)
                    return
                reason = f"unexpected first message {ready!r}"
            except (ChildDied, gevent.Timeout) as exc:
                reason = str(exc) if isinstance(exc, ChildDied) else "did not start in time"
            child.stop()
            failures += 1
            self._start_failed(failures, child.error_line or reason)

    def _started(self) -> None:
        self.counts["started"] += 1
        if self.problems.pop(PROBLEM, None) is not None:
            self.log.info("worker processes starting again")

    def _start_failed(self, failures: int, reason: str) -> None:
        """Log, count, and past the grace say the worker is failing; then wait to retry."""
        self.counts["start_failures"] += 1
        self.log.error("worker process failed to start", reason=reason, retry_in=pause(failures))
        if failures >= UNHEALTHY_AFTER:
            self.problems[PROBLEM] = f"worker processes cannot start ({failures} tries): {reason}"
        gevent.sleep(pause(failures))

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Wait until every child is ready (the test kit's run_once); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.idle.qsize() + len(self.busy) < self.size:
            if time.monotonic() > deadline:
                return False
            self.room.clear()
            self.room.wait(0.1)
        return True

    # Handing children out ---------------------------------------------------------------

    def take(self, timeout: float) -> ChildProcess:
        """An idle child, waiting up to ``timeout`` (gevent.queue.Empty when none came)."""
        child: ChildProcess = self.idle.get(timeout=timeout)
        return child

    def put(self, child: ChildProcess) -> None:
        self.idle.put(child)
        self.room.set()

    # Running one job --------------------------------------------------------------------

    def run(self, child: ChildProcess, entry: HeldJob, seconds: float) -> tuple[Ran, float | None]:
        """Run the held job in ``child`` (taken for it): what happened, and the seconds the
        job took in its child (inf: timed out; None: no measure).

        A child that dies before it started the job is replaced, and the job goes to the
        next child that is free, with its full time (``HANDOVERS`` children at most).
        """
        for handovers in range(1, HANDOVERS + 1):
            try:
                return self._run_in(child, entry, seconds)
            except NotStarted as exc:
                self.counts["lost_before_start"] += 1
                self.discard(child, f"died before its job started: {exc}")
                entry.ctx.log.info("worker process lost before the job started", cause=str(exc))
                if handovers == HANDOVERS:
                    why = f"{HANDOVERS} worker processes died before the job started: {exc}"
                    return Ran(why), None
            # Not running meanwhile: the lease keeper must not take the wait for a stuck
            # handler (it gives up leases past the deadline).
            entry.deadline = time.monotonic() + START_TIMEOUT_S + seconds
            try:
                child = self.take(timeout=START_TIMEOUT_S)
            except gevent.queue.Empty:
                return Ran(f"no worker process free within {START_TIMEOUT_S:g}s"), None
            if self.cancelling:  # the drain's grace ran out meanwhile: hand the job back
                self.put(child)
                return STOPPED, None
            entry.deadline = time.monotonic() + seconds  # its time starts with its child
        raise AssertionError("unreachable")

    def _run_in(
        self, child: ChildProcess, entry: HeldJob, seconds: float
    ) -> tuple[Ran, float | None]:
        self.busy.add(child)
        sent = time.monotonic()
        started = False
        try:
            child.send({"job": _job_message(entry.row, entry.deadline - sent)})
            with gevent.Timeout(max(0.0, entry.deadline - time.monotonic())):
                child.receive()  # {"started": id}, sent before any of the job's code ran
                started = True
                message = child.receive(partial(_progress, entry))
        except gevent.Timeout:  # even before "started": a live child is the job's to wait for
            self.counts["timed_out"] += 1
            self.discard(child, "timed out")
            return Ran(f"timed out after {seconds:g}s"), float("inf")
        except ChildDied as exc:
            if not started:
                raise NotStarted(str(exc)) from exc
            self.counts["crashed"] += 1
            self.discard(child, "died")
            return Ran(f"worker process died: {exc}"), None
        except CancelRequested:  # someone cancelled the job: its child's group is stopped
            self.discard(child, "its job was cancelled")
            raise
        except BaseException:  # GreenletExit: the drain ran out of time; the job goes back
            self.discard(child, "stopped by the shutdown")
            raise
        done = message["done"]
        self._finished(child, done)
        if done.get("progress") and entry.ctx._progress is not None:
            entry.ctx._progress(*done["progress"])  # the executor writes it with the outcome
        ran = Ran(
            done["error"],
            stopped=done["stopped"],
            final=bool(done.get("final")),
            traceback=done.get("traceback"),
            result=done.get("result"),
            snooze_s=done.get("snooze_s"),  # data, not the exception: serve may not know its class
            discarded=bool(done.get("discarded")),
        )
        return ran, time.monotonic() - sent

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
            self.put(child)

    # Replacing and stopping -------------------------------------------------------------

    def _recycle(self, child: ChildProcess, why: str) -> None:
        self.counts["recycled"] += 1
        self.log.info("worker process recycled", pid=child.pid, reason=why)
        gevent.spawn(child.exit)
        self._replace()

    def discard(self, child: ChildProcess, why: str) -> None:
        """Stop ``child`` (and its process group) in the background and start another."""
        self.busy.discard(child)
        self.log.warning("worker process replaced", pid=child.pid, reason=why)
        gevent.spawn(child.stop)
        self._replace()

    def cancel_all(self) -> None:
        """Ask every running handler to stop (``ctx.cancelled``): the shutdown's grace ran out."""
        self.cancelling = True
        for child in list(self.busy):
            try:
                child.send({"cancel": True})
            except ChildDied:  # its job's greenlet learns that itself
                continue

    def close(self) -> None:
        """Stop every child (the end of the drain) and the starters."""
        self._closing = True
        gevent.killall(list(self._starting), timeout=5)
        children = [*self.busy]
        while not self.idle.empty():
            children.append(self.idle.get_nowait())
        gevent.joinall([gevent.spawn(child.stop) for child in children], timeout=10)


def _progress(entry: HeldJob, job_id: Any, fraction: float, message: str | None) -> None:
    """A child's progress report, noted as its job's (a report a leftover thread of an
    earlier job sends is not this job's)."""
    if job_id == entry.id and entry.ctx._progress is not None:
        entry.ctx._progress(fraction, message)


def _job_message(row: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job_type": row["job_type"],
        "payload": row["payload"],
        "attempt": row["attempts"],
        "max_attempts": row["max_attempts"],
        "snoozes": row.get("snoozes", 0),
        "queue": row["queue"],
        "enqueued_at": row["created_at"].isoformat(),
        "timeout_s": max(0.0, timeout_s),
    }
