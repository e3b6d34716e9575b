"""This worker's metrics (``GET /metrics``; the "jobs finished" log line is ``summary.py``'s).

Built on ``prometheus_client``, with a registry of each worker's own (never the process-wide
default), so that two workers in one test process, or a web app that imports Poel beside
its own metrics, never collide. Three kinds of values:

- **Observed on the job path** into plain integers (:class:`Observed`), per (job type,
  outcome): job durations (a histogram) and jobs finished; per claim statement, claim
  round trips and jobs claimed. A collector turns them into prometheus_client's metric
  families at each scrape. (The library's own ``inc()`` and ``observe()`` take a lock
  each: 6 µs a job under gevent, a fifth of what a no-op job costs serve in all; only
  the hub's greenlets write these, which never interleave inside a method.)
- **Read at each scrape** from where they are kept (a collector): running and held jobs,
  each executor's capacity and how much of it is in use, draining, the lease keeper's
  counts (written by its OS thread alone, so plain integers there: a lock of gevent's is
  not for other threads), event-loop blocks (the watchdog's thread), the process pool's.
- **Queue depths** by queue and job type, with the oldest due job's age, and **the jobs
  table as the server sees it** (live and dead row versions, the last vacuum's age,
  autovacuum runs, sizes): from the database, by
  :class:`~poel_host.worker.depths.QueueDepths` every few seconds, never on a scrape; a
  scrape reads its last answer.

Names and units follow Prometheus' conventions (``_total`` counters, ``_seconds``).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from poel_host.worker.table_metrics import JobsTable, jobs_table_families

__all__ = ["JobsTable", "Lane", "Metrics"]

# Jobs last from a millisecond (a no-op) to an hour (JOB_TIMEOUT_MS allows more).
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# A claim is one statement: around a millisecond, far more when the database struggles.
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

Values = Mapping[str, tuple[str, float]]  # metric name -> (help text, value)


@dataclass
class LeaseCounts:
    """What the lease keeper did: written by its thread alone (see leases.py), read here."""

    renewals: int = 0  # renewal statements that succeeded
    failures: int = 0  # renewal statements that failed (the database unavailable)
    lost: int = 0  # leases found lost (expired, or the job taken by another worker)
    given_up: int = 0  # leases no longer renewed: their job ran past its timeout


@dataclass(frozen=True)
class Lane:
    """One executor's capacity, as a scrape sees it."""

    executor: str
    busy: int
    size: int


class Metrics:
    """This worker's registry, what the services observe into it, and the summary's counts."""

    def __init__(
        self,
        gauges: Callable[[], Values],
        counters: Callable[[], Values] = dict,
        lanes: Callable[[], list[Lane]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.finished: collections.Counter[str] = collections.Counter()  # runs by outcome
        self.leases = LeaseCounts()
        # The hub watchdog's count of event-loop blocks; serve wires it (None: no watchdog).
        self.event_loop_blocks: Callable[[], int] | None = None
        # (queue, job type) -> (due jobs, oldest due job's age in seconds): QueueDepths'.
        self.queues: dict[tuple[str, str], tuple[int, float]] = {}
        # The jobs table's statistics, QueueDepths' too (None: not read yet, or unreadable).
        self.jobs_table: JobsTable | None = None
        # (from phase, to phase) -> times: the held attempts' transitions (see held.py).
        self.transitions: collections.Counter[tuple[str, str]] = collections.Counter()
        # service -> times it died and was restarted: the supervisor's.
        self.restarts: collections.Counter[str] = collections.Counter()
        self._per_job: dict[tuple[str, str], Observed] = {}  # (job type, outcome)
        self._per_lane: dict[str, Observed] = {}  # executor
        self.registry.register(_Observations(self))
        self.registry.register(_Scraped(self, gauges, counters, lanes))

    # Observed ---------------------------------------------------------------------------

    def job_finished(self, job_type: str, outcome: str, seconds: float) -> None:
        """A job run ended with ``outcome`` after ``seconds`` (the executor, per job)."""
        self.finished[outcome] += 1
        observed = self._per_job.get((job_type, outcome))
        if observed is None:
            observed = self._per_job[job_type, outcome] = Observed(JOB_BUCKETS)
        observed.observe(seconds)

    def claimed(self, executor: str, seconds: float, jobs: int) -> None:
        """A claim statement of ``executor``'s lane took ``seconds`` and ``jobs`` (per claim)."""
        observed = self._per_lane.get(executor)
        if observed is None:
            observed = self._per_lane[executor] = Observed(CLAIM_BUCKETS)
        observed.observe(seconds, jobs)

    # Exposition -------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus' text format unless it
        asks for OpenMetrics): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class Observed:
    """A histogram's buckets, sum and count, and a total (jobs claimed), in plain numbers."""

    __slots__ = ("bounds", "counts", "sum", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last: +Inf
        self.sum = 0.0
        self.total = 0

    def observe(self, seconds: float, amount: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: bound >= seconds
        self.sum += seconds
        self.total += amount

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as prometheus_client's families take them."""
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        out: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(bounds, self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


class _Observations:
    """The observed values as metric families, at each scrape (a collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        finished = CounterMetricFamily(
            "poel_jobs_finished",
            "Job runs this worker finished, by job type and outcome "
            "(succeeded, retry, failed, snoozed, discarded, cancelled).",
            labels=["job_type", "outcome"],
        )
        durations = HistogramMetricFamily(
            "poel_job_duration_seconds",
            "How long job runs took (the handler and its hooks), by job type and outcome.",
            labels=["job_type", "outcome"],
        )
        for labels, observed in sorted(m._per_job.items()):
            finished.add_metric(list(labels), observed.total)
            durations.add_metric(list(labels), observed.buckets(), observed.sum)
        claims = HistogramMetricFamily(
            "poel_claim_duration_seconds",
            "Claim statements' round trips, by executor (lane).",
            labels=["executor"],
        )
        claimed = CounterMetricFamily(
            "poel_jobs_claimed", "Jobs claimed, by executor.", labels=["executor"]
        )
        for executor, observed in sorted(m._per_lane.items()):
            claims.add_metric([executor], observed.buckets(), observed.sum)
            claimed.add_metric([executor], observed.total)
        yield from (finished, durations, claims, claimed)


class _Scraped:
    """The values read at each scrape (a prometheus_client collector)."""

    def __init__(
        self,
        metrics: Metrics,
        gauges: Callable[[], Values],
        counters: Callable[[], Values],
        lanes: Callable[[], list[Lane]],
    ) -> None:
        self.metrics = metrics
        self.gauges = gauges
        self.counters = counters
        self.lanes = lanes

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        leases = m.leases
        counters: dict[str, tuple[str, float]] = {
            "poel_lease_renewals_total": ("Lease renewal statements run.", leases.renewals),
            "poel_lease_renewal_failures_total": ("Lease renewals that failed.", leases.failures),
            "poel_leases_lost_total": ("Leases found expired or taken over.", leases.lost),
            "poel_leases_given_up_total": (
                "Leases no longer renewed: their job ran past its timeout.",
                leases.given_up,
            ),
        }
        if m.event_loop_blocks is not None:
            counters["poel_event_loop_blocks_total"] = (
                "Times the event loop was blocked past POEL_BLOCKING_WARN_MS.",
                m.event_loop_blocks(),
            )
        for name, (text, value) in {**counters, **self.counters()}.items():
            yield CounterMetricFamily(name, text, value=value)
        for name, (text, value) in self.gauges().items():
            yield GaugeMetricFamily(name, text, value=value)

        capacity = GaugeMetricFamily(
            "poel_executor_capacity",
            "Jobs each executor can run at once: greenlet slots, POEL_THREADS, POEL_PROCESSES.",
            labels=["executor"],
        )
        busy = GaugeMetricFamily(
            "poel_executor_busy", "Jobs each executor runs now.", labels=["executor"]
        )
        for lane in self.lanes():
            capacity.add_metric([lane.executor], lane.size)
            busy.add_metric([lane.executor], lane.busy)
        yield capacity
        yield busy

        moved = CounterMetricFamily(
            "poel_attempt_transitions_total",
            "Held attempts' moves between phases (claimed, running, pending, written, "
            "handing back, handed back, lost).",
            labels=["from", "to"],
        )
        for (was, to), count in sorted(m.transitions.items()):
            moved.add_metric([was, to], count)
        yield moved

        restarts = CounterMetricFamily(
            "poel_service_restarts_total",
            "Times each background service died and was restarted.",
            labels=["service"],
        )
        for service, count in sorted(m.restarts.items()):
            restarts.add_metric([service], count)
        yield restarts

        depth = GaugeMetricFamily(
            "poel_queue_depth",
            "Jobs queued and due, by queue and job type, counted up to 10000 (the whole "
            "table's, as of the last POEL_QUEUE_METRICS_INTERVAL_S query).",
            labels=["queue", "job_type"],
        )
        oldest = GaugeMetricFamily(
            "poel_queue_oldest_age_seconds",
            "How long the oldest due job of each queue and job type has waited.",
            labels=["queue", "job_type"],
        )
        for (queue, job_type), (count, age) in sorted(m.queues.items()):
            depth.add_metric([queue, job_type], count)
            oldest.add_metric([queue, job_type], age)
        yield depth
        yield oldest
        yield from jobs_table_families(m.jobs_table)
