"""The periodic "jobs finished" summary: per-job lines are at debug (at info they cost as
much CPU as a no-op job), so an operator reading logs at info sees this every few seconds
instead. It reads the counts :class:`~poel_host.worker.metrics.Metrics` keeps."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import gevent

from poel_host.worker.metrics import Metrics
from poel_host.worker.supervisor import Service

SUMMARY_INTERVAL_S = 10.0


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
