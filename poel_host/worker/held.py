"""The jobs a worker holds: claimed, running, or finished with the outcome not yet written.

Every service reads the same table of them: the producer (not to claim a held job again),
the executor (running it), the lease keeper (renewing it), the completer (forgetting it
once its outcome is written) and the drain (handing back what did not finish).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from poel_host.jobs import JobContext
from poel_host.worker.job_connections import Loans


@dataclass
class HeldJob:
    """One job this worker holds a lease on."""

    row: dict[str, Any]
    ctx: JobContext
    lost: bool = False  # its lease was lost: its outcome will not be recorded
    released: bool = False  # stopped by the shutdown: handed back, attempt not counted
    done: bool = False  # its outcome is with the completer, which reports a lost lease
    loans: Loans = field(default_factory=Loans)  # its handler's job-pool connections

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` by which the handler must be done (0: not started). Kept
        with the loans: the context's connection factory needs it and must not hold this
        entry (see ``Worker._spawn``)."""
        return self.loans.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self.loans.deadline = value


Held = dict[int, HeldJob]
