"""Writing outcomes in batches, and handing jobs back at shutdown.

Outcomes are written through database outages: an outcome not yet written is still
protected by its job's lease (renewed while the job is held), so nothing is lost by
waiting. Only once written is a job forgotten (removed from the held table).
"""

from __future__ import annotations

from typing import Any

import gevent
import gevent.queue

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.store import Store
from poel_host.worker.executor import Outcome
from poel_host.worker.held import Held
from poel_host.worker.supervisor import Service

BATCH = 1000  # outcomes one completion statement writes


class Completer(Service):
    name = "completer"

    def __init__(self, store: Store, *, owner: str, held: Held, log: Any) -> None:
        super().__init__()
        self.store = store
        self.owner = owner
        self.held = held
        self.log = log
        self.outcomes: gevent.queue.Queue[Outcome | None] = gevent.queue.Queue()
        self._batch: list[Outcome] = []  # taken from the queue, not yet written

    def put(self, outcome: Outcome) -> None:
        self.outcomes.put(outcome)

    def close(self) -> None:
        """Write what is queued, then end ``run()``."""
        self.outcomes.put(None)

    def run(self) -> None:
        while True:
            if not self._batch:  # else: restarted after dying with a batch in hand
                first = self.outcomes.get()
                if first is None:
                    return
                self._batch = [first]
                self._take_more()
            self.write(self._batch)
            self._batch = []
            self.passed()

    def _take_more(self) -> None:
        while len(self._batch) < BATCH:
            try:
                item = self.outcomes.get_nowait()
            except gevent.queue.Empty:
                return
            if item is None:
                self.outcomes.put(None)  # seen again after this batch: then run() ends
                return
            self._batch.append(item)

    def drain_now(self) -> None:
        """Write every outcome queued (for ``Worker.run_once``: no completer greenlet)."""
        batch = []
        while not self.outcomes.empty():
            item = self.outcomes.get_nowait()
            if item is not None:
                batch.append(item)
        if batch:
            self.write(batch)

    def write(self, batch: list[Outcome]) -> None:
        rows = [(o.job_id, o.state, o.error, o.delay_ms, o.traceback) for o in batch]
        failures = 0
        while True:
            try:
                written = self.store.finish(rows, self.owner)
                break
            except DatabaseUnavailable as exc:
                failures += 1
                self.log.warning(
                    "recording outcomes failed; will retry",
                    jobs=len(batch),
                    error=one_line(exc),
                    retry_in=pause(failures),
                )
                gevent.sleep(pause(failures))
        for outcome in batch:
            self.held.pop(outcome.job_id, None)
            if outcome.job_id not in written:
                self.log.warning(
                    "job outcome not recorded: lease lost or already recorded",
                    jobId=outcome.job_id,
                    outcome=outcome.state,
                )

    def release(self, ids: list[int], attempts: int = 5) -> bool:
        """Hand running jobs back to the queue (attempt not counted); False if it failed."""
        for attempt in range(1, attempts + 1):
            try:
                released = self.store.release_jobs(ids, self.owner)
            except DatabaseUnavailable as exc:
                self.log.warning("handing jobs back failed", error=one_line(exc), attempt=attempt)
                gevent.sleep(pause(attempt))
                continue
            self.log.info("jobs handed back to the queue", jobs=released)
            for job_id in ids:
                self.held.pop(job_id, None)
            return True
        self.log.error("could not hand jobs back; they return when their lease expires", jobs=ids)
        return False
