"""This worker's counters: ``GET /metrics`` and the periodic "jobs finished" summary.

Only what the process knows: queue depths are the database's (``poel-host jobs stats``),
and counting them on every scrape would cost a scan of a large table.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from poel_host.worker.supervisor import Service

SUMMARY_INTERVAL_S = 10.0


@dataclass
class LeaseCounts:
    """What the lease keeper did: written by its thread alone (see leases.py), read here."""

    renewals: int = 0  # renewal statements that succeeded
    failures: int = 0  # renewal statements that failed (the database unavailable)
    lost: int = 0  # leases found lost (expired, or the job taken by another worker)
    given_up: int = 0  # leases no longer renewed: their job ran past its timeout


class Metrics:
    """Counters kept by the services, and gauges read from the worker when scraped."""

    def __init__(
        self,
        gauges: Callable[[], dict[str, tuple[str, int]]],
        counters: Callable[[], dict[str, tuple[str, int]]] = dict,
    ) -> None:
        self.finished: collections.Counter[str] = collections.Counter()  # runs by outcome
        self._gauges = gauges  # name -> (help text, value), read at each scrape
        self._counters = counters  # the same, for counters kept elsewhere (the pool's)
        self.leases = LeaseCounts()
        # The hub watchdog's count of event-loop blocks; serve wires it (None: no watchdog).
        self.event_loop_blocks: Callable[[], int] | None = None

    def render(self) -> str:
        """The counters in Prometheus' text format."""
        lines = [
            "# HELP poel_jobs_finished_total Job runs this worker finished, by outcome.",
            "# TYPE poel_jobs_finished_total counter",
        ]
        for outcome in ("succeeded", "retry", "failed"):
            lines.append(
                f'poel_jobs_finished_total{{outcome="{outcome}"}} {self.finished[outcome]}'
            )
        counters = {**self._own_counters(), **self._counters()}
        for kind, values in (("counter", counters), ("gauge", self._gauges())):
            for name, (text, value) in values.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    def _own_counters(self) -> dict[str, tuple[str, int]]:
        leases = self.leases
        counters = {
            "poel_lease_renewals_total": ("Lease renewal statements run.", leases.renewals),
            "poel_lease_renewal_failures_total": ("Lease renewals that failed.", leases.failures),
            "poel_leases_lost_total": ("Leases found expired or taken over.", leases.lost),
            "poel_leases_given_up_total": (
                "Leases no longer renewed: their job ran past its timeout.",
                leases.given_up,
            ),
        }
        if self.event_loop_blocks is not None:
            counters["poel_event_loop_blocks_total"] = (
                "Times the event loop was blocked past POEL_BLOCKING_WARN_MS.",
                self.event_loop_blocks(),
            )
        return counters


class Summary(Service):
    """Logs how many jobs finished, by outcome, every SUMMARY_INTERVAL_S (if any did):
    per-job lines are at debug, since at info they cost as much CPU as a no-op job."""

    name = "summary"

    def __init__(self, metrics: Metrics, *, running: Callable[[], int], log: Any) -> None:
        super().__init__()
        self.metrics = metrics
        self.running = running
        self.log = log

    def run(self) -> None:
        reported: collections.Counter[str] = collections.Counter()
        while True:
            gevent.sleep(SUMMARY_INTERVAL_S)
            window = self.metrics.finished - reported
            if window:
                reported = self.metrics.finished.copy()
                self.log.info(
                    "jobs finished", window_s=SUMMARY_INTERVAL_S, running=self.running(), **window
                )
            self.passed()
