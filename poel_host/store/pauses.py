"""The store's statements for pauses: pausing and resuming a queue or a job type, and
listing what is paused (the queue client, the CLI, the dashboard). The claim reads the
pauses itself (``ready_jobs``); nothing here runs on a job's way through a worker.
"""

from __future__ import annotations

from typing import Any

import psycopg

from poel_host.errors import InvalidName
from poel_host.store.base import Conn, StoreBase


class PauseStore(StoreBase):
    """Paused queues and job types."""

    def pause(
        self,
        kind: str,
        name: str,
        *,
        reason: str | None = None,
        paused_by: str | None = None,
        connection: Conn | None = None,
    ) -> bool:
        """Pause ``name`` (a queue or a job type): True if this paused it, False if it was
        paused already."""
        params = {"kind": kind, "name": name, "reason": reason, "paused_by": paused_by or None}
        try:
            row = self._one("pause", params, connection)
        except psycopg.errors.CheckViolation as exc:
            # The Python checks come first; this is a name that slipped past them.
            raise InvalidName(
                f"cannot pause {kind} {name[:60]!r}: {exc.diag.constraint_name}"
            ) from None
        return bool(row and row["paused"])

    def resume(self, kind: str, name: str, connection: Conn | None = None) -> bool:
        """Resume ``name``: True if it was paused, False if it was not."""
        row = self._one("resume", {"kind": kind, "name": name}, connection)
        return bool(row and row["resumed"])

    def list_pauses(self, connection: Conn | None = None) -> list[dict[str, Any]]:
        """What is paused, oldest first."""
        return self._all("list_pauses", None, connection)
