"""What ``/metrics`` reads off a worker at each scrape: its gauges, its plain counters and
its lanes' capacity (the metric families are made in ``metrics.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from poel_host.worker.metrics import Lane

if TYPE_CHECKING:
    from poel_host.worker.worker import Worker


def gauges(worker: Worker) -> dict[str, tuple[str, int]]:
    return {
        "poel_jobs_running": ("Jobs running now.", worker.running()),
        "poel_jobs_held": ("Jobs holding a lease of this worker.", len(worker.held)),
        "poel_worker_concurrency": ("WORKER_CONCURRENCY.", worker.settings.worker_concurrency),
        "poel_worker_draining": ("1 while shutting down.", int(worker.stopping.is_set())),
        **(worker.processes.gauges() if worker.processes is not None else {}),
        **(worker.threads.gauges() if worker.threads is not None else {}),
    }


def lanes(worker: Worker) -> list[Lane]:
    if worker.queue_pool is None:
        return []
    return [Lane(lane.executor, lane.slots.running(), lane.size) for lane in worker.producer.lanes]


def counters(worker: Worker) -> dict[str, tuple[str, int]]:
    counters = {
        "poel_outcome_write_failures_total": (
            "Statements recording outcomes that failed (an outage, or a row that could "
            "not be written).",
            worker.completer.failures if worker.queue_pool is not None else 0,
        ),
    }
    return {**counters, **(worker.processes.counters() if worker.processes is not None else {})}
