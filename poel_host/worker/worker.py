"""The worker: opens the pools, starts and supervises the services, drains at shutdown.

Services, each on its own supervised greenlet (see the modules named after them):
the producer's claim loops, the completer, the lease keeper, the rescuer, the pruner, the
scheduler, the listener and the summary. The worker keeps its row in the registry of
workers (``registry.py``): written at start, kept fresh by the lease keeper's heartbeat,
marked draining on stop and deleted once drained. Claimed jobs run on runner greenlets
(``runners.py``) through the executor. The queue's own traffic has its own small pool, so
handlers saturating the job pool never stall claiming or lease renewal.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
import gevent.event

from poel_host.database import Pool, make_pool
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.health import Health
from poel_host.jobs import JobContext
from poel_host.plugins import Plugins
from poel_host.queue import Queue
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker.completer import Completer
from poel_host.worker.depths import QueueDepths
from poel_host.worker.executor import Executor
from poel_host.worker.held import CLAIMED, HANDED_BACK, HANDING_BACK, Held, HeldJob
from poel_host.worker.job_connections import JobConnections, Loans
from poel_host.worker.leases import LeaseKeeper
from poel_host.worker.listener import Listener
from poel_host.worker.metrics import Lane as MetricsLane
from poel_host.worker.metrics import Metrics, Summary
from poel_host.worker.problems import Problems
from poel_host.worker.processes import ProcessPool
from poel_host.worker.producer import Lane, Producer
from poel_host.worker.promoter import BATCH as PROMOTE_BATCH
from poel_host.worker.promoter import Promoter
from poel_host.worker.pruner import Pruner
from poel_host.worker.registry import Registration
from poel_host.worker.rescuer import Rescuer
from poel_host.worker.runners import Runners
from poel_host.worker.scheduler import Scheduler
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
        self.metrics = Metrics(self._gauges, self._counters, self._lanes_in_use)
        self.metrics.restarts = self.supervisor.restarts
        self.slots: Runners[HeldJob] = Runners(settings.worker_concurrency, self._run)
        self.processes: ProcessPool | None = None
        self.threads: Threads | None = None
        self.queue_pool: Pool | None = None
        self.job_pool: Pool | None = None
        self._enqueuer: Queue | None = None

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
            owner=self.owner,
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
        )
        self.producer = Producer(
            self.store,
            s,
            owner=self.owner,
            lanes=self.lanes,
            held=self.held,
            spawn=self._spawn,
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
            # Stuck threads make /health unhealthy through the supervisor's problems.
            problems = self.supervisor.failing
            self.threads = Threads(s, self.store, jobs=self.plugins.jobs, problems=problems)
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
        log, wake = self.log, self.producer.wake
        self._register()
        leases = LeaseKeeper(
            s,
            owner=self.owner,
            held=self.held,
            log=log,
            counts=self.metrics.leases,
            registration=self.registration,
        )
        for service in (
            Listener(s, self.store, wake=wake, log=log),
            leases,
            Rescuer(
                self.store,
                interval=leases.interval,
                on_rescued=wake,
                log=log,
                gone_workers_keep_s=s.gone_workers_keep_s,
                backoff_ms=(s.retry_backoff_ms, s.retry_backoff_max_ms),
            ),
            Pruner(self.store, s, log=self.log),
            Promoter(self.store, interval=s.poll_interval_ms / 1000, on_promoted=wake, log=log),
            Scheduler(list(self.plugins.jobs.values()), self.store, log=self.log),
            Summary(self.metrics, running=lambda: len(self.slots), log=self.log),
        ):
            self.supervisor.start(service)
        if s.queue_metrics_interval_s:
            self.supervisor.start(
                QueueDepths(self.store, self.metrics, interval=s.queue_metrics_interval_s, log=log)
            )
        self._completing = self.supervisor.start(self.completer)
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
            self.log.info("worker stopping", running=self._running())
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
            self._drain()

    def run_once(self, limit: int | None = None) -> list[int]:
        """Claim the jobs due now (up to ``limit``), run them, and record their outcomes,
        on this greenlet: no services, no signals. What the test kit's ``run_job`` runs;
        returns the ids run."""
        self.open()
        while self.store.promote_due(limit=PROMOTE_BATCH) >= PROMOTE_BATCH:
            pass  # retries whose backoff is over, delayed jobs now due
        ran = []
        for lane in self.producer.lanes:
            if lane.slots is self.processes:
                # Children are started only once a process job is due (then kept until
                # close()): most of a plugin's tests never need one.
                rows = self.producer.claim(lane, limit or self.processes.size)
                if rows:
                    self.processes.start()
                    self.processes.wait_ready()
            else:
                rows = self.producer.claim(lane, min(limit or lane.size, lane.slots.free_count()))
            for row in rows:
                self._spawn(lane, row)
            ran += [row["id"] for row in rows]
        for lane in self.producer.lanes:
            lane.slots.join()
        self.completer.drain_now()
        return ran

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

    def _register(self) -> None:
        """Enter the registry; if the database is away, the first heartbeat does it."""
        self._registry("registering the worker", self.registration.register)

    def _registry(self, what: str, change: Callable[[Store], None]) -> None:
        try:
            change(self.store)
        except DatabaseUnavailable as exc:
            self.log.warning(f"{what} failed", error=one_line(exc))

    # Jobs -------------------------------------------------------------------------------

    def _spawn(self, lane: Lane, row: dict[str, Any]) -> None:
        # The context's connection factory holds the loans, never the entry (which holds
        # the context): a cycle per job would leave every finished job to the cyclic
        # garbage collector, whose collections then took a fifth of a no-op job's CPU.
        loans = Loans()
        borrow: Any = self.connections.borrow
        cancel: Any = self.cancelling
        enqueue: Any = self._enqueue
        if lane.executor == "thread":
            assert self.threads is not None
            borrow = self.threads.borrow  # a connection of the thread's own
            enqueue = self.threads.enqueue  # so is its enqueue's: none of the hub's
            cancel = self.threads.cancel.new()  # its own: set at its timeout or shutdown
        ctx = JobContext(
            job_id=row["id"],
            job_type=row["job_type"],
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            queue=row["queue"],
            enqueued_at=row["created_at"],
            log=self.log.bind(jobId=row["id"], jobType=row["job_type"], attempt=row["attempts"]),
            settings=self.settings,
            _connection_factory=partial(borrow, loans),
            _enqueue=enqueue,
            _cancel_event=cancel,
        )
        entry = HeldJob(row=row, ctx=ctx, loans=loans, counts=self.metrics.transitions)
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

    def _gauges(self) -> dict[str, tuple[str, int]]:
        return {
            "poel_jobs_running": ("Jobs running now.", self._running()),
            "poel_jobs_held": ("Jobs holding a lease of this worker.", len(self.held)),
            "poel_worker_concurrency": ("WORKER_CONCURRENCY.", self.settings.worker_concurrency),
            "poel_worker_draining": ("1 while shutting down.", int(self.stopping.is_set())),
            **(self.processes.gauges() if self.processes is not None else {}),
            **(self.threads.gauges() if self.threads is not None else {}),
        }

    def _lanes_in_use(self) -> list[MetricsLane]:
        if self.queue_pool is None:
            return []
        return [
            MetricsLane(lane.executor, len(lane.slots), lane.size) for lane in self.producer.lanes
        ]

    def _counters(self) -> dict[str, tuple[str, int]]:
        counters = {
            "poel_outcome_write_failures_total": (
                "Statements recording outcomes that failed (an outage, or a row that could "
                "not be written).",
                self.completer.failures if self.queue_pool is not None else 0,
            ),
        }
        return {**counters, **(self.processes.counters() if self.processes is not None else {})}

    def _running(self) -> int:
        lanes = self.producer.lanes if self.queue_pool is not None else []
        return sum(len(lane.slots) for lane in lanes) if lanes else len(self.slots)

    # Draining ---------------------------------------------------------------------------

    def _drain(self) -> None:
        grace = self.settings.shutdown_timeout_ms / 1000
        lanes = [lane.slots for lane in self.producer.lanes]
        self.log.info("worker draining", running=self._running(), grace_seconds=grace)
        _join(lanes, grace)
        if self._running():
            self.cancelling.set()
            if self.threads is not None:
                self.threads.cancel.set()
            if self.processes is not None:
                self.processes.cancel_all()
            _join(lanes, min(1.0, grace) if grace else 0)
            for lane in lanes:
                for entry in lane.kill(timeout=5):
                    entry.move(HANDING_BACK)
        # Stopped mid-run (counted toward POEL_MAX_HANDBACKS), or never started.
        back = [e for e in self.held.values() if e.phase in (CLAIMED, HANDING_BACK)]
        started = [e for e in back if e.started]
        self.completer.release(started, started=True)
        self.completer.release([e for e in back if not e.started], started=False)
        released = [e.id for e in back if e.phase == HANDED_BACK]
        if self.producer.unanswered:
            try:
                self.producer.release_unanswered()
            except DatabaseUnavailable as exc:
                self.log.warning(
                    "jobs of a claim whose answer was lost return when their lease expires",
                    error=one_line(exc),
                )
        self.completer.close()
        self._completing.join(timeout=30)
        self.supervisor.stop(timeout=5)
        # After the lease keeper stopped: its heartbeat would register the worker again.
        self._registry("leaving the registry", self.registration.unregister)
        self.plugins.call("shutdown", self.log, settings=self.settings)
        self.close()
        self.log.info("worker stopped", handed_back=len(released), **self.metrics.finished)


def _join(lanes: list[Any], timeout: float) -> None:
    """Wait until every lane has finished its jobs, for ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for lane in lanes:
        lane.join(timeout=max(0.0, deadline - time.monotonic()))
