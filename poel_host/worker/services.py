"""The services a ``serve`` runs beside its runners, each supervised on a greenlet of its
own: the listener (new jobs, and running jobs cancelled), the lease keeper, the rescuer,
the archiver, the pruner, the promoter, the scheduler, the summary, the progress writer
and, when asked for, the queue depths. Made here, in one list, so that the worker's life
cycle (``worker.py``) reads as opening, starting and draining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from poel_host.worker.archiver import Archiver
from poel_host.worker.cancels import request
from poel_host.worker.depths import QueueDepths
from poel_host.worker.leases import LeaseKeeper
from poel_host.worker.listener import Listener
from poel_host.worker.progress import ProgressWriter
from poel_host.worker.promoter import Promoter
from poel_host.worker.pruner import Pruner
from poel_host.worker.rescuer import Rescuer
from poel_host.worker.scheduler import Scheduler
from poel_host.worker.summary import Summary
from poel_host.worker.supervisor import Service

if TYPE_CHECKING:
    from poel_host.worker.worker import Worker


def services(worker: Worker) -> list[Service]:
    """The worker's services, not started; the completer is started on its own."""
    s, log, wake, store = worker.settings, worker.log, worker.producer.wake, worker.store
    held = worker.held

    def cancel(job_id: int) -> bool:  # a running job someone cancelled (cancels.py)
        return request(held, job_id)

    leases = LeaseKeeper(
        s,
        owner=worker.owner,
        held=worker.held,
        log=log,
        counts=worker.metrics.leases,
        registration=worker.registration,
        cancel=cancel,
    )
    made: list[Service] = [
        Listener(s, store, wake=wake, log=log, cancel=cancel),
        leases,
        Rescuer(
            store,
            interval=leases.interval,
            on_rescued=wake,
            log=log,
            gone_workers_keep_s=s.gone_workers_keep_s,
            backoff_ms=(s.retry_backoff_ms, s.retry_backoff_max_ms),
        ),
        Archiver(store, s, log=log),
        Pruner(store, s, log=log),
        Promoter(store, interval=s.poll_interval_ms / 1000, on_promoted=wake, log=log),
        Scheduler(list(worker.plugins.jobs.values()), store, log=log),
        Summary(worker.metrics, running=worker.running, log=log),
        ProgressWriter(store, worker.progress, log=log),
    ]
    if s.queue_metrics_interval_s:
        made.append(
            QueueDepths(store, worker.metrics, interval=s.queue_metrics_interval_s, log=log)
        )
    return made
