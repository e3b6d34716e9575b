"""The drain: how a worker stops (SIGTERM, SIGINT), in the order that loses nothing.

1. Running jobs get ``POEL_SHUTDOWN_TIMEOUT_MS`` to finish (claiming has stopped).
2. Those still running are asked to stop (``ctx.cancelled``; children get a cancel), and
   get a second more; then their runners are killed.
3. Every attempt stopped mid-run or never started is handed back to the queue: the first
   kind counts toward ``POEL_MAX_HANDBACKS``, the second never does; so are the jobs of a
   claim whose answer was lost.
4. The completer writes what it holds; the services stop; the worker leaves the registry
   (after the lease keeper stopped: its heartbeat would register it again), the
   ``shutdown`` hook runs, and the pools close.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.worker.held import CLAIMED, HANDED_BACK, HANDING_BACK

if TYPE_CHECKING:
    from poel_host.worker.worker import Worker


def drain(worker: Worker) -> None:
    grace = worker.settings.shutdown_timeout_ms / 1000
    lanes = [lane.slots for lane in worker.producer.lanes]
    worker.log.info("worker draining", running=worker.running(), grace_seconds=grace)
    _join(lanes, grace)
    if any(len(lane) for lane in lanes):  # jobs still running, or a claim still in flight
        worker.cancelling.set()
        if worker.threads is not None:
            worker.threads.cancel.set()
        if worker.processes is not None:
            worker.processes.cancel_all()
        _join(lanes, min(1.0, grace) if grace else 0)
        for lane in lanes:
            for entry in lane.kill(timeout=5):
                entry.move(HANDING_BACK)
    back = [e for e in worker.held.values() if e.phase in (CLAIMED, HANDING_BACK)]
    worker.completer.release([e for e in back if e.started], started=True)
    worker.completer.release([e for e in back if not e.started], started=False)
    handed_back = [e.id for e in back if e.phase == HANDED_BACK]
    if worker.producer.unanswered:
        try:
            worker.producer.release_unanswered()
        except DatabaseUnavailable as exc:
            worker.log.warning(
                "jobs of a claim whose answer was lost return when their lease expires",
                error=one_line(exc),
            )
    worker.completer.close()
    worker.completing.join(timeout=30)
    worker.supervisor.stop(timeout=5)
    worker.leave_registry()
    worker.plugins.call("shutdown", worker.log, settings=worker.settings)
    worker.close()
    worker.log.info("worker stopped", handed_back=len(handed_back), **worker.metrics.finished)


def _join(lanes: list[Any], timeout: float) -> None:
    """Wait until every lane has finished its jobs, for ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for lane in lanes:
        lane.join(timeout=max(0.0, deadline - time.monotonic()))
