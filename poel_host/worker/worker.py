"""The worker: opens the pools, starts and supervises the services, drains at shutdown.

Services, each on its own supervised greenlet (see the modules named after them):
the producer's claim loops, the completer, the lease keeper, the rescuer, the promoter,
the pruner, the scheduler, the listener, the queue depths and the summary. Each claimed
row becomes an attempt (``attempts.py``) in the held table, whose life is ``held.py``'s
state machine; the drain (``drain.py``) hands back what did not finish. The worker keeps
its row in the registry of workers (``registry.py``): written at start, kept fresh by the
lease keeper's heartbeat, marked draining on stop and deleted once drained. Claimed jobs
run on runner greenlets (``runners.py``) through the executor. The queue's own traffic has
its own small pool, so handlers saturating the job pool never stall claiming or lease
renewal.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
import gevent.event

from poel_host.database import Pool, make_pool
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.health import Health
from poel_host.plugins import Plugins
from poel_host.queue import Queue
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker import readings
from poel_host.worker.attempts import Attempts
from poel_host.worker.completer import Completer
from poel_host.worker.drain import drain
from poel_host.worker.executor import Executor
from poel_host.worker.held import Held, HeldJob
from poel_host.worker.job_connections import JobConnections
from poel_host.worker.metrics import Metrics
from poel_host.worker.problems import Problems
from poel_host.worker.processes import ProcessPool
from poel_host.worker.producer import Lane, Producer
from poel_host.worker.progress import ProgressBoard
from poel_host.worker.registry import Registration
from poel_host.worker.run_once import run_once
from poel_host.worker.runners import Runners
from poel_host.worker.services import services
from poel_host.worker.supervisor import Supervisor
from poel_host.worker.threads import Threads

QUEUE_POOL_SIZE = 10  # claim loops (two a lane), completer, rescuer, pruner, scheduler, promoter
# (the lease keeper's thread has a connection of its own)


class Worker:
    """One process's worker. ``run()`` blocks until ``stop()`` and the drain finish."""

    def __init__(self, settings: Settings, plugins: Plugins, *, log: Any) -> None:
        self.settings = settings
        self.plugins = plugins
        self.log = log
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: Held = {}
        self.stopping = gevent.event.Event()
        self.cancelling = gevent.event.Event()  # running jobs asked to stop (shutdown)
        self.problems = Problems()  # why it cannot work now: /health's 503 (problems.py)
        self.supervisor = Supervisor(log=log, problems=self.problems)
        self.health = Health(settings, failing=self.problems)
        self.metrics = Metrics(
            partial(readings.gauges, self),
            partial(readings.counters, self),
            partial(readings.lanes, self),
        )
        self.metrics.restarts = self.supervisor.restarts
        self.slots: Runners[HeldJob] = Runners(settings.worker_concurrency, self._run)
        self.processes: ProcessPool | None = None
        self.threads: Threads | None = None
        self.queue_pool: Pool | None = None
        self.job_pool: Pool | None = None
        self._enqueuer: Queue | None = None
        self.progress = ProgressBoard()  # ctx.progress reports, written by ProgressWriter

    # Life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the pools and build the services (none started)."""
        if self.queue_pool is not None:
            return
        s = self.settings
        self.queue_pool = make_pool(
            s.dsn,
            name="queue",
            min_size=2,
            max_size=QUEUE_POOL_SIZE,
            pooler=s.pooler,
            connect_timeout=s.connect_timeout_s,
        )
        self.job_pool = make_pool(
            s.dsn,
            name="jobs",
            min_size=0,
            max_size=s.db_pool_size,
            pooler=s.pooler,
            connect_timeout=s.connect_timeout_s,
            autocommit=False,
        )
        self.store = Store(s.schema_name, self.queue_pool)
        self.connections = JobConnections(
            self.job_pool,
            self.store,
            transaction_pooler=s.pooler == "transaction",
            log=self.log,
        )
        self._enqueuer = Queue.for_settings(s, self.plugins.jobs)
        self.completer = Completer(
            self.store,
            held=self.held,
            log=self.log,
            max_handbacks=s.max_handbacks,
            problems=self.problems,
        )
        self.lanes = self._lanes()
        self.registration = Registration(
            s,
            self.plugins,
            owner=self.owner,
            executors={lane.executor for lane in self.lanes if lane.job_types},
        )
        self.attempts = Attempts(
            s,
            connections=self.connections,
            enqueue=self._enqueue,
            cancelling=self.cancelling,
            threads=self.threads,
            progress=self.progress,
            transitions=self.metrics.transitions,
            log=self.log,
        )
        self.executor = Executor(
            s,
            self.plugins,
            held=self.held,
            connections=self.connections,
            complete=self.completer.put,
            finished=self.metrics.job_finished,
            stopping=self.stopping,
            log=self.log,
            processes=self.processes,
            threads=self.threads,
            progress=self.progress,
        )
        self.producer = Producer(
            self.store,
            s,
            owner=self.owner,
            lanes=self.lanes,
            held=self.held,
            spawn=self.spawn,
            stopping=self.stopping,
            log=self.log,
            on_claim=self.metrics.claimed,
        )

    def _lanes(self) -> list[Lane]:
        """One lane per executor that a loaded job type uses (its capacity made here)."""
        s = self.settings
        types: dict[str, list[str]] = {"greenlet": [], "thread": [], "process": []}
        for job in self.plugins.jobs.values():
            types[job.executor].append(job.type)
        lanes = [Lane("greenlet", types["greenlet"], self.slots)]
        if types["thread"]:
            # Stuck threads make /health unhealthy through the worker's problems.
            self.threads = Threads(s, self.store, jobs=self.plugins.jobs, problems=self.problems)
            lanes.append(Lane("thread", types["thread"], Runners(s.threads, self._run)))
        if types["process"]:
            self.processes = ProcessPool(
                s,
                self.plugins,
                self._run,
                hand_back=self._hand_back,
                log=self.log,
                problems=self.problems,  # children that cannot start: /health 503
            )
            lanes.append(Lane("process", types["process"], self.processes))
        return lanes

    def start(self) -> None:
        """Open the pools and start every service."""
        s = self.settings
        self.open()
        if self.processes is not None:
            self.processes.start()
        # serve's claims are held by its heartbeat (run_once's, with no registry row, by a
        # lease of their own): the producer claims only once the row is written.
        self.producer.registration = self.registration
        self._register()
        for service in services(self):
            self.supervisor.start(service)
        self.completing = self.supervisor.start(self.completer)
        self.plugins.call("startup", self.log, settings=s)
        self.log.info(
            "worker started",
            owner=self.owner,
            concurrency=s.worker_concurrency,
            job_types=sorted(self.plugins.jobs),
            queues=s.queue_names,
        )

    def stop(self) -> None:
        """Stop claiming; ``run()`` then drains and returns."""
        if not self.stopping.is_set():
            self.log.info("worker stopping", running=self.running())
        self.health.draining = True
        self.stopping.set()
        if self.queue_pool is not None:
            self.producer.stop()

    def run(self) -> None:
        self.start()
        claiming = [self.supervisor.start(loop) for loop in self.producer.loops()]
        try:
            self.stopping.wait()
        finally:
            self.stop()
            self._registry("marking the worker draining", self.registration.drain)
            gevent.joinall(claiming)  # no claim in flight while draining
            drain(self)

    def run_once(self, limit: int | None = None) -> list[int]:
        """Claim the jobs due now (up to ``limit``), run them, and record their outcomes,
        on this greenlet: no services, no signals (``run_once.py``); returns the ids run."""
        return run_once(self, limit)

    def close(self) -> None:
        """Stop the children and threads, and close the pools opened by ``open()``."""
        if self.processes is not None:
            self.processes.close()
        if self.threads is not None:
            self.threads.close()
        for pool in (self.job_pool, self.queue_pool):
            if pool is not None:
                pool.close(timeout=5)
        self.job_pool = self.queue_pool = None
        if self._enqueuer is not None:
            self._enqueuer.close()
        self.health.close()

    # The registry -----------------------------------------------------------------------

    def leave_registry(self) -> None:
        self._registry("leaving the registry", self.registration.unregister)

    def _register(self) -> None:
        """Enter the registry; if the database is away, the first claim or heartbeat does
        it."""
        self._registry("registering the worker", self.registration.register)

    def _registry(self, what: str, change: Callable[[Store], None]) -> None:
        try:
            change(self.store)
        except DatabaseUnavailable as exc:
            self.log.warning(f"{what} failed", error=one_line(exc))

    # Jobs -------------------------------------------------------------------------------

    def spawn(self, lane: Lane, row: dict[str, Any]) -> None:
        """Make a claimed row an attempt, held, and hand it to its lane."""
        entry = self.attempts.make(lane.executor, row)
        self.held[entry.id] = entry
        lane.slots.submit(entry)

    def _run(self, entry: HeldJob) -> None:
        self.executor.run(entry)

    def _hand_back(self, entry: HeldJob) -> None:
        """A job claimed ahead that no child took in time goes back to the queue."""
        self.completer.release([entry], started=False)

    def _enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        assert self._enqueuer is not None
        return self._enqueuer.enqueue(job_type, payload, **options)

    def running(self) -> int:
        """Jobs submitted to the lanes and not finished (claims in flight are not jobs:
        counting them made an idle worker read as busy at a scrape during a claim)."""
        lanes = self.producer.lanes if self.queue_pool is not None else []
        return sum(lane.slots.running() for lane in lanes) if lanes else self.slots.running()
