"""Writing outcomes in batches, and handing attempts back.

Outcomes are written through database outages: an outcome not yet written is still
protected by its job's lease (renewed while the attempt is held, up to its deadline and a
lease more: see ``leases.py``), so nothing is lost by waiting. Only once written is an
attempt forgotten (removed from the held table).

**Nothing one outcome holds can stop the others.** Texts are made storable by the store;
if a batch's statement still fails for a reason other than an unavailable database (a bug,
a value nobody foresaw), the batch is written again row by row, and a row that fails on
its own is recorded as a worker error naming why, or, if even that fails, let go: its
lease then expires and the rescuer gives it back to the queue. The completer never dies
with a batch in hand, which used to leave every later outcome of the worker unwritten.
While it cannot write at all for longer than ``STUCK_AFTER_S``, ``/health`` says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gevent
import gevent.queue

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, error_text, one_line
from poel_host.store import Store
from poel_host.worker.held import HANDED_BACK, HANDING_BACK, LOST, WRITTEN, Held, HeldJob
from poel_host.worker.outcomes import Outcome
from poel_host.worker.problems import Problems
from poel_host.worker.supervisor import Service

BATCH = 1000  # outcomes one completion statement writes
STUCK_AFTER_S = 10.0  # writing has failed this long: /health reports the completer
PROBLEM = "completer"  # its key among the worker's problems (see health.py)
RELEASE_TRIES = 5


class Completer(Service):
    name = "completer"

    def __init__(
        self,
        store: Store,
        *,
        held: Held,
        log: Any,
        max_handbacks: int = 3,
        problems: Problems | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.held = held
        self.log = log
        self.max_handbacks = max_handbacks
        self.failures = 0  # statements that failed (an outage, or a row that cannot be written)
        self._writing_since = 0.0  # time.monotonic() the batch in hand was taken; 0: none
        if problems is not None:
            problems.check(PROBLEM, self.stuck)
        self.outcomes: gevent.queue.Queue[Outcome | None] = gevent.queue.Queue()
        self._batch: list[Outcome] = []  # taken from the queue, not yet written

    def stuck(self) -> str | None:
        """Why outcomes are not being recorded, once a batch has waited STUCK_AFTER_S: the
        database refuses them, or a statement waits on a lock (for /health)."""
        since = self._writing_since
        if since and time.monotonic() - since > STUCK_AFTER_S:
            waited = time.monotonic() - since
            return f"outcomes not recorded for {waited:.0f}s ({len(self._batch)} waiting)"
        return None

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
            self._writing_since = self._writing_since or time.monotonic()
            self.write(self._batch)
            self._batch = []
            self._writing_since = 0.0
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

    # Writing ----------------------------------------------------------------------------

    def write(self, batch: list[Outcome]) -> None:
        # Successes and the rest are separate statements (see Store.finish): written apart,
        # so that one that fails never hides what the other wrote.
        succeeded = [o for o in batch if o.state == "succeeded"]
        others = [o for o in batch if o.state != "succeeded"]
        written = self._write_group(succeeded) | self._write_group(others)
        for outcome in batch:
            entry = self._forget(outcome)
            if outcome.job_id in written:
                if entry is not None:
                    entry.move(WRITTEN)
                continue
            if entry is not None:
                entry.move(LOST)
            self.log.warning(
                "job outcome not recorded: lease lost or already recorded",
                jobId=outcome.job_id,
                outcome=outcome.state,
            )

    def _forget(self, outcome: Outcome) -> HeldJob | None:
        """Take the outcome's attempt out of the held table. Only its own: once its fate is
        in the database the job may be claimed again, by this worker too, and the held
        entry under its id is then the new attempt's (another token)."""
        entry = self.held.get(outcome.job_id)
        if entry is None or entry.token != outcome.token:
            return None
        del self.held[outcome.job_id]
        return entry

    def _write_group(self, group: list[Outcome]) -> set[int]:
        if not group:
            return set()
        try:
            return self._through_outages(group)
        except Exception as exc:  # noqa: BLE001 - not an outage: find the row that fails
            self.log.error(
                "recording a batch of outcomes failed; recording them one by one",
                jobs=len(group),
                error=error_text(exc),
            )
            return {o.job_id for o in group if self._one_by_one(o)}

    def _through_outages(self, batch: Sequence[Outcome]) -> set[int]:
        """Write ``batch``, waiting out database outages; other errors are raised."""
        failures = 0
        while True:
            try:
                return self.store.finish([o.as_row() for o in batch])
            except DatabaseUnavailable as exc:
                failures += 1
                self.failures += 1
                self.log.warning(
                    "recording outcomes failed; will retry",
                    jobs=len(batch),
                    error=one_line(exc),
                    retry_in=pause(failures),
                )
                gevent.sleep(pause(failures))
            except Exception:
                self.failures += 1
                raise

    def _one_by_one(self, outcome: Outcome) -> bool:
        """Write one outcome alone; if it fails, record a worker error in its place, with
        the attempt counted (the handler did run). False if neither could be written."""
        try:
            return outcome.job_id in self._through_outages([outcome])
        except Exception as exc:  # noqa: BLE001 - recorded in the job's place
            why = error_text(exc)
        self.log.error("a job's outcome could not be recorded", jobId=outcome.job_id, error=why)
        # A snooze that cannot be written runs again as a retry would (its attempt counted).
        state = "queued" if outcome.state in ("queued", "snoozed") else "failed"
        stand_in = Outcome(
            outcome.job_id,
            state,
            f"worker error: the attempt's outcome ({outcome.state}) could not be recorded: {why}",
            outcome.delay_ms if state == "queued" else 0,
            token=outcome.token,
        )
        try:
            return outcome.job_id in self._through_outages([stand_in])
        except Exception as exc:  # noqa: BLE001 - let go: the lease expires, rescue requeues
            self.log.error(
                "a job's outcome could not be recorded; it returns to the queue when its "
                "lease expires",
                jobId=outcome.job_id,
                error=error_text(exc),
            )
            return False

    # Handing back -----------------------------------------------------------------------

    def release(self, entries: Sequence[HeldJob], *, started: bool) -> bool:
        """Hand attempts back to the queue; False if the database could not be reached.

        Their attempts do not count, but for ``started`` ones handed back more than
        ``max_handbacks`` times already. Either way they leave the held table: one that
        could not be handed back is no longer renewed, so it returns to the queue when its
        lease expires, instead of being held for the worker's whole life."""
        if not entries:
            return True
        attempts = [(e.id, e.token) for e in entries]
        for entry in entries:
            entry.move(HANDING_BACK)
        try:
            for attempt in range(1, RELEASE_TRIES + 1):
                try:
                    released = self.store.release_jobs(
                        attempts, started=started, max_handbacks=self.max_handbacks
                    )
                except DatabaseUnavailable as exc:
                    self.log.warning(
                        "handing jobs back failed", error=one_line(exc), attempt=attempt
                    )
                    gevent.sleep(pause(attempt))
                    continue
                counted = sorted(job_id for job_id, c in released.items() if c)
                self.log.info(
                    "jobs handed back to the queue",
                    jobs=sorted(released),
                    **({"counted_as_attempts": counted} if counted else {}),
                )
                for entry in entries:
                    entry.move(HANDED_BACK if entry.id in released else LOST)
                return True
            self.log.error(
                "could not hand jobs back; they return when their lease expires",
                jobs=[a[0] for a in attempts],
            )
            for entry in entries:
                entry.move(LOST)
            return False
        finally:
            for entry in entries:
                if self.held.get(entry.id) is entry:
                    del self.held[entry.id]
