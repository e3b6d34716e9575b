"""``Worker.run_once``: the jobs due now, claimed, run and recorded on the caller's greenlet.

What the test kit's ``run_job`` runs (``poel_host.testing.runner``): the worker's own
claim, validate, run and complete path, with no services and no signals. It is the other
way than ``run()`` through the worker's lanes, as the drain (``drain.py``) is the other
way out, so it lives beside it rather than in the worker's life cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from poel_host.worker.promoter import BATCH as PROMOTE_BATCH

if TYPE_CHECKING:
    from poel_host.worker.worker import Worker


def run_once(worker: Worker, limit: int | None = None) -> list[int]:
    """Claim the jobs due now (up to ``limit``), run them, and record their outcomes;
    returns the ids run."""
    worker.open()
    store, producer = worker.store, worker.producer
    producer.steering.forget()  # what a test steered or unsteered just before holds now
    while store.promote_due(limit=PROMOTE_BATCH) >= PROMOTE_BATCH:
        pass  # retries whose backoff is over, delayed jobs now due
    ran = []
    for lane in producer.lanes:
        processes = worker.processes
        if processes is not None and lane.slots is processes:
            # Children are started only once a process job is due (then kept until
            # close()): most of a plugin's tests never need one.
            rows = producer.claim(lane, limit or processes.size)
            if rows:
                processes.start()
                processes.wait_ready()
        else:
            rows = producer.claim(lane, min(limit or lane.size, lane.slots.free_count()))
        for row in rows:
            worker.spawn(lane, row)
        ran += [row["id"] for row in rows]
    for lane in producer.lanes:
        lane.slots.join()
    worker.completer.drain_now()
    return ran
