"""Keeping the leases of the jobs this worker holds.

Every third of ``POEL_LEASE_MS`` one statement renews every held job's lease. A job whose
lease was not renewed (it expired, or another worker rescued it) is marked lost: its
outcome will not be recorded, since by now another worker may run it. This service does
nothing else, so that no other work (a prune of a large backlog, a slow rescue) can delay
a renewal past the lease.
"""

from __future__ import annotations

from typing import Any

import gevent

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.store import Store
from poel_host.worker.held import Held
from poel_host.worker.supervisor import Service


class LeaseKeeper(Service):
    name = "leases"

    def __init__(self, store: Store, *, owner: str, lease_ms: int, held: Held, log: Any) -> None:
        super().__init__()
        self.store = store
        self.owner = owner
        self.lease_ms = lease_ms
        self.held = held
        self.log = log

    @property
    def interval(self) -> float:
        return self.lease_ms / 3000

    def run(self) -> None:
        failures = 0
        while True:
            # After a failure, try again soon: two more missed intervals lose every lease.
            gevent.sleep(min(self.interval, pause(failures)) if failures else self.interval)
            try:
                self.renew()
            except DatabaseUnavailable as exc:
                failures += 1
                self.log.warning("lease renewal failed", error=one_line(exc))
                continue
            failures = 0
            self.passed()

    def renew(self) -> None:
        held = list(self.held.items())
        if not held:
            return
        kept = self.store.renew_leases([job_id for job_id, _ in held], self.owner, self.lease_ms)
        for job_id, entry in held:
            # Only the attempt asked about: its job may have been claimed again meanwhile.
            # A finished attempt is skipped: its outcome may be committed already with the
            # completer not yet told, and if the lease is lost the completer says so.
            if (
                job_id not in kept
                and not (entry.lost or entry.done)
                and self.held.get(job_id) is entry
            ):
                entry.lost = True
                entry.ctx.log.warning("job lease lost; its outcome will not be recorded")
