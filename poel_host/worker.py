"""The worker: claims jobs, runs them in a greenlet pool, records their outcomes.

Greenlets, each with one job:

- two claim loops each take up to the number of free slots in one statement (at most half
  the concurrency, or 25 jobs, whichever is more), so that one claim's round trip overlaps
  the other's jobs, then wait for a slot, a NOTIFY, or the poll interval; runner greenlets
  (``runners.py``) run the claimed jobs;
- the listener keeps a LISTEN connection (re-established when it drops) and wakes the claim
  loop when jobs are inserted;
- the lease keeper renews the leases of every job this worker holds in one statement and
  requeues jobs whose worker died (their lease expired);
- the completer writes outcomes in batches, retrying through database outages: an outcome
  not yet written is still protected by the job's lease, so nothing is lost.

The queue's own traffic has its own small pool, so handlers saturating the job pool never
stall claiming or lease renewal.
"""

from __future__ import annotations

import collections
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.queue
import psycopg
import psycopg_pool

from poel_host import backoff, payloads
from poel_host.database import make_pool
from poel_host.errors import DatabaseUnavailable, InvalidPayload, error_text, one_line
from poel_host.health import Health
from poel_host.job_connections import JobConnections, Loans
from poel_host.jobs import Job, JobContext
from poel_host.plugins import Plugins
from poel_host.queries import Queries
from poel_host.queue import Queue
from poel_host.runners import Runners
from poel_host.scheduler import Scheduler
from poel_host.settings import Settings

NOTIFY_CHANNEL = "poel_jobs"
_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
_BATCH = 1000  # outcomes a completion statement writes, and finished jobs a prune deletes
# What a run's outcome is counted as (metrics, summaries, the job_finished hook).
_LABELS = {"succeeded": "succeeded", "failed": "failed", "queued": "retry"}
PRUNE_INTERVAL_S = 300.0
SUMMARY_INTERVAL_S = 10.0
CLAIM_MIN = 25
CLAIMERS = 2  # claim loops per worker, so that one claim's round trip overlaps another's


@dataclass
class Outcome:
    job_id: int
    state: str  # succeeded | failed | queued (retry)
    error: str | None = None
    delay_ms: int = 0


@dataclass
class Active:
    """A job this worker holds: running, or finished with its outcome not yet written."""

    row: dict[str, Any]
    ctx: JobContext
    lost: bool = False
    released: bool = False
    deadline: float = 0.0  # time.monotonic() by which the handler must be done
    done: bool = False  # its outcome is with the completer, which reports a lost lease
    loans: Loans = field(default_factory=Loans)  # its handler's job-pool connections


class Worker:
    """One process's worker. ``run()`` blocks until ``stop()`` and the drain finish."""

    def __init__(self, settings: Settings, plugins: Plugins, *, log: Any) -> None:
        self.settings = settings
        self.plugins = plugins
        self.jobs: dict[str, Job] = plugins.jobs
        self.log = log
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queries = Queries(settings.schema_name)
        self.health = Health(settings)
        self.slots: Runners[Active] = Runners(settings.worker_concurrency, self._run_job)
        # Claim size: half the pool, so that a claim's round trip overlaps the last
        # claim's jobs, but no fewer than CLAIM_MIN (or the whole pool when it is
        # smaller): a claim costs about a millisecond however many rows it takes, which
        # a small batch would not pay back.
        c = settings.worker_concurrency
        self._claim_batch = max((c + 1) // 2, min(c, CLAIM_MIN))
        self.active: dict[int, Active] = {}
        self.finished: collections.Counter[str] = collections.Counter()  # runs by outcome
        # Per-job hooks cost a call per job even when no plugin implements them.
        self._hooked_started = bool(plugins.manager.hook.job_started.get_hookimpls())
        self._hooked_finished = bool(plugins.manager.hook.job_finished.get_hookimpls())
        self.wake = gevent.event.Event()
        self.backlog = gevent.event.Event()  # the last claim came back full
        self.stopping = gevent.event.Event()
        self.cancelling = gevent.event.Event()  # running jobs asked to stop (shutdown)
        self.outcomes: gevent.queue.Queue[Outcome | None] = gevent.queue.Queue()
        self.queue_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self.job_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self.job_connections: JobConnections | None = None
        self._background: list[gevent.Greenlet] = []  # killed at shutdown
        self._completer: gevent.Greenlet | None = None  # joined at shutdown
        self._enqueuer: Queue | None = None

    # Life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the connection pools (no greenlets started)."""
        if self.queue_pool is not None:
            return
        s = self.settings
        prepare = s.pooler == "none"
        self.queue_pool = make_pool(
            s.dsn,
            name="queue",
            min_size=2,
            max_size=4,
            connect_timeout=s.connect_timeout_s,
            prepare=prepare,
        )
        self.job_pool = make_pool(
            s.dsn,
            name="jobs",
            min_size=0,
            max_size=s.db_pool_size,
            connect_timeout=s.connect_timeout_s,
            autocommit=False,
            prepare=prepare,
        )
        self.job_connections = JobConnections(
            self.job_pool,
            self.queries,
            transaction_pooler=s.pooler == "transaction",
            log=self.log,
        )
        self._enqueuer = Queue(
            s.dsn, schema=s.schema_name, jobs=self.jobs, max_payload_bytes=s.max_payload_bytes
        )

    def start(self) -> None:
        """Open the pools and start the listener, lease keeper and completer."""
        s = self.settings
        self.open()
        assert self.queue_pool is not None
        scheduler = Scheduler(list(self.jobs.values()), self.queue_pool, self.queries, log=self.log)
        self._background = [
            gevent.spawn(self._listen if s.pooler == "none" else self._poll_only),
            gevent.spawn(self._keep_leases),
            gevent.spawn(self._summarise),
            gevent.spawn(scheduler.run),
        ]
        self._completer = gevent.spawn(self._complete)
        self.plugins.call("startup", self.log, settings=s)
        self.log.info(
            "worker started",
            owner=self.owner,
            concurrency=s.worker_concurrency,
            job_types=sorted(self.jobs),
            queues=s.queue_names,
        )

    def stop(self) -> None:
        """Stop claiming; ``run()`` then drains and returns."""
        if not self.stopping.is_set():
            self.log.info("worker stopping", running=len(self.slots))
        self.health.draining = True
        self.stopping.set()
        self.wake.set()
        self.backlog.set()

    def run(self) -> None:
        self.start()
        helpers = [gevent.spawn(self._claim_loop, helper=True) for _ in range(CLAIMERS - 1)]
        try:
            self._claim_loop()
        finally:
            self.stopping.set()
            self.backlog.set()
            gevent.joinall(helpers)  # no claim in flight while draining
            self._drain()

    def run_once(self, limit: int | None = None) -> list[int]:
        """Claim the jobs due now (up to ``limit``), run them, and record their outcomes.

        For tests and scripts: no listener, no lease keeper, no signals. Returns the ids run.
        """
        self.open()
        rows = self._claim(limit or self.settings.worker_concurrency)
        for row in rows:
            self._spawn(row)
        self.slots.join()
        batch = []
        while not self.outcomes.empty():
            item = self.outcomes.get_nowait()
            if item is not None:
                batch.append(item)
        if batch:
            self._write(batch)
        return [row["id"] for row in rows]

    def close(self) -> None:
        """Close the pools opened by ``open()``."""
        for pool in (self.job_pool, self.queue_pool):
            if pool is not None:
                pool.close(timeout=5)
        self.job_pool = self.queue_pool = None
        if self._enqueuer is not None:
            self._enqueuer.close()
        self.health.close()

    # Claiming ---------------------------------------------------------------------------

    def _claim_loop(self, helper: bool = False) -> None:
        """Claim jobs until stopped. ``CLAIMERS - 1`` helper loops claim only while
        claims come back full (a backlog): while one loop waits for its claim's round trip
        and commit, the other's jobs run; an idle worker makes one claim per wake-up."""
        failures = 0
        while not self.stopping.is_set():
            if helper and not self.backlog.is_set():
                self.backlog.wait(timeout=1.0)
                continue
            free = self.slots.free_count()
            if free <= 0:
                self.slots.wait_available(timeout=1.0)
                continue
            self.wake.clear()
            # Slots are held while the claim is in flight, so claims never take more jobs
            # than the pool can start at once.
            limit = min(free, self._claim_batch)
            self.slots.reserve(limit)
            try:
                rows = self._claim(limit)
                failures = 0
            except _DB_ERRORS as exc:
                failures += 1
                self.log.warning("claim failed", error=one_line(exc), retry_in=_pause(failures))
                self.stopping.wait(_pause(failures))
                continue
            finally:
                self.slots.unreserve(limit)
            for row in rows:
                self._spawn(row)
            if len(rows) == limit:
                self.backlog.set()
                continue
            self.backlog.clear()
            if not helper:
                self.wake.wait(self.settings.poll_interval_ms / 1000)

    def _claim(self, limit: int) -> list[dict[str, Any]]:
        if not self.jobs:
            return []
        assert self.queue_pool is not None
        with self.queue_pool.connection(timeout=5) as conn:
            rows = conn.execute(
                self.queries["claim_jobs"],
                {
                    "job_types": list(self.jobs),
                    "queues": self.settings.queue_names,
                    "limit": limit,
                    "owner": self.owner,
                    "lease_ms": self.settings.lease_ms,
                    # A retry becomes due while its last attempt's outcome is still being
                    # written (or retried through an outage): this worker must not claim it
                    # again until that attempt has left self.active.
                    "held": list(self.active),
                },
            ).fetchall()
        return list(rows)

    def _spawn(self, row: dict[str, Any]) -> None:
        ctx = JobContext(
            job_id=row["id"],
            job_type=row["job_type"],
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            queue=row["queue"],
            enqueued_at=row["created_at"],
            log=self.log.bind(jobId=row["id"], jobType=row["job_type"], attempt=row["attempts"]),
            settings=self.settings,
            _connection_factory=lambda: self._connections().borrow(entry.loans, entry.deadline),
            _enqueue=self._enqueue,
            _cancel_event=self.cancelling,
        )
        # The connection factory above reads `entry` only when a handler calls it.
        entry = Active(row=row, ctx=ctx)
        self.active[row["id"]] = entry
        self.slots.submit(entry)

    # Running ----------------------------------------------------------------------------

    def _run_job(self, entry: Active) -> None:
        row, ctx = entry.row, entry.ctx
        job = self.jobs[row["job_type"]]
        if self._hooked_started:
            self.plugins.call("job_started", ctx.log, ctx=ctx)
        ctx.log.debug("job started")
        started = time.monotonic()
        try:
            outcome = self._execute(job, entry)
        except gevent.GreenletExit:
            entry.released = True
            duration = time.monotonic() - started
            ctx.log.warning("job interrupted by shutdown", duration=round(duration, 3))
            self.plugins.call(
                "job_finished", ctx.log, ctx=ctx, outcome="released", duration=duration, error=None
            )
            return
        except Exception as exc:  # a bug on the job's path must not strand the job
            # (e.g. a plugin's backoff function raising): without an outcome the job would
            # stay running, its lease renewed for as long as this worker lives.
            ctx.log.exception("job path failed")
            outcome = Outcome(row["id"], "failed", f"worker error: {error_text(exc)}")
        duration = round(time.monotonic() - started, 6)
        label = _LABELS[outcome.state]
        self.finished[label] += 1
        if outcome.state == "succeeded":
            # Debug: at info a JSON line per job costs as much CPU as the rest of a no-op
            # job's path; operators get the periodic "jobs finished" summary instead.
            ctx.log.debug("job succeeded", duration=duration)
        elif outcome.state == "queued":
            ctx.log.warning(
                "job retry scheduled",
                duration=duration,
                error=outcome.error,
                retry_in_ms=outcome.delay_ms,
            )
        else:
            ctx.log.error("job failed", duration=duration, error=outcome.error)
        if self._hooked_finished:
            self.plugins.call(
                "job_finished",
                ctx.log,
                ctx=ctx,
                outcome=label,
                duration=duration,
                error=outcome.error,
            )
        if entry.lost:
            ctx.log.warning("job outcome not recorded: lease lost to another worker")
            self.active.pop(row["id"], None)
            return
        entry.done = True
        self.outcomes.put(outcome)

    def _execute(self, job: Job, entry: Active) -> Outcome:
        row, ctx = entry.row, entry.ctx
        try:
            # text from the claim (see claim_jobs): parsed here, one job at a time
            payload = payloads.validate(job, payloads.to_object(job.type, row["payload"]))
        except InvalidPayload as exc:
            return Outcome(row["id"], "failed", str(exc))
        seconds = job.timeout_seconds(self.settings.job_timeout_ms)
        timer = gevent.Timeout(seconds)
        entry.deadline = time.monotonic() + seconds
        timer.start()
        error: str | None = None
        try:
            result = job.handler(payload, ctx)
        except gevent.Timeout as exc:
            error = f"timed out after {seconds:g}s" if exc is timer else f"Timeout: {exc}"
        except psycopg.errors.QueryCanceled as exc:
            # The handler connection's statement_timeout is the job's remaining time: when
            # the server cancels first, it is the same timeout, reported the same way.
            if time.monotonic() >= entry.deadline - 0.05:
                error = f"timed out after {seconds:g}s"
            else:
                error = f"QueryCanceled: {one_line(exc)}"
        except gevent.GreenletExit as exc:
            if self.stopping.is_set():
                raise  # the drain stopping it: the job is handed back
            error = error_text(exc)  # raised by the handler itself
        except BaseException as exc:
            error = error_text(exc)
            ctx.log.debug("handler raised", exc_info=exc)
        finally:
            timer.close()
            misuse = self._connections().reclaim(entry.loans, ctx.log)
        error = error or misuse
        if error is None:
            if result is not None:
                ctx.log.debug("handler returned a value; it is ignored", value=repr(result)[:200])
            return Outcome(row["id"], "succeeded")
        if row["attempts"] >= row["max_attempts"]:
            return Outcome(row["id"], "failed", error)
        delay = backoff.retry_delay_ms(
            job,
            row["attempts"],
            base_ms=self.settings.retry_backoff_ms,
            max_ms=self.settings.retry_backoff_max_ms,
        )
        return Outcome(row["id"], "queued", error, delay)

    def _connections(self) -> JobConnections:
        assert self.job_connections is not None, "open() the worker first"
        return self.job_connections

    def _enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        assert self._enqueuer is not None
        return self._enqueuer.enqueue(job_type, payload, **options)

    # Completing -------------------------------------------------------------------------

    def _complete(self) -> None:
        while True:
            first = self.outcomes.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = self.outcomes.get_nowait()
                except gevent.queue.Empty:
                    break
                if item is None:
                    self.outcomes.put(None)
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Outcome]) -> None:
        # Successes, the common case, go through a statement with one array parameter.
        succeeded = [o.job_id for o in batch if o.state == "succeeded"]
        others = [o for o in batch if o.state != "succeeded"]
        failures = 0
        while True:
            try:
                assert self.queue_pool is not None
                written: set[int] = set()
                with self.queue_pool.connection(timeout=5) as conn:
                    if succeeded:
                        params = {"ids": succeeded, "owner": self.owner}
                        cursor = conn.execute(self.queries["finish_succeeded"], params)
                        written.update(r["id"] for r in cursor)
                    if others:
                        params = {
                            "ids": [o.job_id for o in others],
                            "states": [o.state for o in others],
                            "errors": [o.error for o in others],
                            "delays_ms": [o.delay_ms for o in others],
                            "owner": self.owner,
                        }
                        cursor = conn.execute(self.queries["finish_jobs"], params)
                        written.update(r["id"] for r in cursor)
                break
            except _DB_ERRORS as exc:
                failures += 1
                self.log.warning(
                    "recording outcomes failed; will retry",
                    jobs=len(batch),
                    error=one_line(exc),
                    retry_in=_pause(failures),
                )
                gevent.sleep(_pause(failures))
        for outcome in batch:
            self.active.pop(outcome.job_id, None)
            if outcome.job_id not in written:
                self.log.warning(
                    "job outcome not recorded: lease lost or already recorded",
                    jobId=outcome.job_id,
                    outcome=outcome.state,
                )

    # Leases -----------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        interval = self.settings.lease_ms / 3000
        next_prune = time.monotonic() + min(PRUNE_INTERVAL_S, 10 * interval)
        failures = 0
        while True:
            # After a failure, try again soon: two more missed intervals lose every lease.
            gevent.sleep(min(interval, _pause(failures)) if failures else interval)
            try:
                self._renew()
                self._recover()
                failures = 0
            except _DB_ERRORS as exc:
                failures += 1
                self.log.warning("lease renewal failed", error=one_line(exc))
                continue
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_S
                self._prune()

    def metrics(self) -> str:
        """This worker's counters in Prometheus' text format (``GET /metrics``). Only what
        the process knows: queue depths are the database's (``poel-host jobs stats``), and
        counting them on every scrape would cost a scan of a large table."""
        lines = [
            "# HELP poel_jobs_finished_total Job runs this worker finished, by outcome.",
            "# TYPE poel_jobs_finished_total counter",
        ]
        for outcome in ("succeeded", "retry", "failed"):
            lines.append(
                f'poel_jobs_finished_total{{outcome="{outcome}"}} {self.finished[outcome]}'
            )
        gauges = {
            "poel_jobs_running": ("Jobs running now.", len(self.slots)),
            "poel_jobs_held": ("Jobs holding a lease of this worker.", len(self.active)),
            "poel_worker_concurrency": ("WORKER_CONCURRENCY.", self.settings.worker_concurrency),
            "poel_worker_draining": ("1 while shutting down.", int(self.stopping.is_set())),
        }
        for name, (text, value) in gauges.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    def _summarise(self) -> None:
        """Log how many jobs finished, by outcome, every SUMMARY_INTERVAL_S (if any did)."""
        reported: collections.Counter[str] = collections.Counter()
        while True:
            gevent.sleep(SUMMARY_INTERVAL_S)
            window = self.finished - reported
            if window:
                reported = self.finished.copy()
                self.log.info(
                    "jobs finished", window_s=SUMMARY_INTERVAL_S, running=len(self.slots), **window
                )

    def _renew(self) -> None:
        held = list(self.active.items())
        if not held:
            return
        ids = [job_id for job_id, _ in held]
        assert self.queue_pool is not None
        with self.queue_pool.connection(timeout=5) as conn:
            kept = {
                r["id"]
                for r in conn.execute(
                    self.queries["renew_leases"],
                    {"ids": ids, "owner": self.owner, "lease_ms": self.settings.lease_ms},
                )
            }
        for job_id, entry in held:
            # Only the attempt asked about: its job may have been claimed again meanwhile.
            # A finished attempt is skipped: its outcome may be committed already with the
            # completer not yet told, and if the lease is lost the completer says so.
            if (
                job_id not in kept
                and not (entry.lost or entry.done)
                and self.active.get(job_id) is entry
            ):
                entry.lost = True
                entry.ctx.log.warning("job lease lost; its outcome will not be recorded")

    def _prune(self) -> None:
        """Delete finished jobs past their retention, in batches (POEL_RETAIN_*_HOURS)."""
        s = self.settings
        deleted = 0
        try:
            assert self.queue_pool is not None
            with self.queue_pool.connection(timeout=5) as conn:
                while True:
                    rows = conn.execute(
                        self.queries["prune_finished"],
                        {
                            "succeeded_hours": s.retain_succeeded_hours,
                            "failed_hours": s.retain_failed_hours,
                            "batch": _BATCH,
                        },
                    ).fetchall()
                    deleted += len(rows)
                    if len(rows) < _BATCH:
                        break
                    gevent.sleep(0)
        except _DB_ERRORS as exc:
            self.log.warning("pruning finished jobs failed", error=one_line(exc))
        if deleted:
            self.log.info("finished jobs pruned", jobs=deleted)

    def _recover(self) -> None:
        assert self.queue_pool is not None
        with self.queue_pool.connection(timeout=5) as conn:
            rows = conn.execute(self.queries["recover_expired"]).fetchall()
        for row in rows:
            self.log.warning("job lease expired; worker lost", jobId=row["id"], state=row["state"])
        if rows:
            self.wake.set()

    def _poll_only(self) -> None:
        """Behind a transaction pooler LISTEN cannot work: the claim loop polls instead."""
        self.log.info("LISTEN disabled (POEL_POOLER=transaction): polling for new jobs")

    # Listening --------------------------------------------------------------------------

    def _listen(self) -> None:
        failures = 0
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(
                    self.settings.dsn,
                    autocommit=True,
                    connect_timeout=self.settings.connect_timeout_s,
                    application_name="poel-host:listen",
                )
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                if failures:
                    self.log.info("listening again for new jobs")
                failures = 0
                self.wake.set()  # notifications may have been missed while disconnected
                while True:
                    for notify in conn.notifies(timeout=5.0):
                        if notify.payload == self.settings.schema_name:
                            self.wake.set()
                    conn.execute("SELECT 1")  # a LISTEN connection can die silently
            except (psycopg.Error, DatabaseUnavailable) as exc:
                failures += 1
                self.log.warning(
                    "listen connection lost; polling until it is back",
                    error=one_line(exc),
                    retry_in=_pause(failures),
                )
                gevent.sleep(_pause(failures))
            finally:
                if conn is not None:
                    conn.close()

    # Draining ---------------------------------------------------------------------------

    def _drain(self) -> None:
        grace = self.settings.shutdown_timeout_ms / 1000
        self.log.info("worker draining", running=len(self.slots), grace_seconds=grace)
        self.slots.join(timeout=grace)
        if len(self.slots):
            self.cancelling.set()
            self.slots.join(timeout=min(1.0, grace) if grace else 0)
            for entry in self.slots.kill(timeout=5):
                entry.released = True
        released = [job_id for job_id, e in self.active.items() if e.released]
        if released:
            self._release(released)
        self.outcomes.put(None)
        if self._completer is not None:
            self._completer.join(timeout=30)
        gevent.killall(self._background, timeout=5)
        self.plugins.call("shutdown", self.log, settings=self.settings)
        self.close()
        self.log.info("worker stopped", handed_back=len(released), **self.finished)

    def _release(self, ids: list[int]) -> None:
        for attempt in range(1, 6):
            try:
                assert self.queue_pool is not None
                with self.queue_pool.connection(timeout=5) as conn:
                    rows = conn.execute(
                        self.queries["release_jobs"], {"ids": ids, "owner": self.owner}
                    ).fetchall()
                self.log.info("jobs handed back to the queue", jobs=[r["id"] for r in rows])
                for job_id in ids:
                    self.active.pop(job_id, None)
                return
            except _DB_ERRORS as exc:
                self.log.warning("handing jobs back failed", error=one_line(exc), attempt=attempt)
                gevent.sleep(_pause(attempt))
        self.log.error("could not hand jobs back; they return when their lease expires", jobs=ids)


def _pause(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive database errors (0.1 s up to 5 s)."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 10)))
