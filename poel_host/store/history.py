"""The store's statements for finished jobs: moving them out of the jobs table into the
partitioned history, and retention (see migration 0013), also of finished workflows
(migration 0027). Run by each worker's archiver and pruner on connections of their own,
never on the job path.
"""

from __future__ import annotations

from poel_host.store.base import Conn, StoreBase


class HistoryStore(StoreBase):
    """Archiving finished jobs and pruning them past their retention."""

    def archive_finished(
        self,
        *,
        after_s: float,
        succeeded_hours: float,
        batch: int,
        connection: Conn | None = None,
    ) -> int:
        """Move up to ``batch`` jobs finished over ``after_s`` seconds ago (and within
        their retention) into the history; how many."""
        params = {"after_s": after_s, "succeeded_hours": succeeded_hours, "batch": batch}
        return len(self._all("archive_finished", params, connection))

    def make_done_partitions(
        self,
        *,
        back_s: float,
        width_s: int,
        ahead: int,
        connection: Conn | None = None,
    ) -> int:
        """Make the history's missing partitions for finished jobs, from ``back_s``
        seconds ago to ``ahead`` partitions past now; how many were made."""
        params = {"back_s": back_s, "width_s": width_s, "ahead": ahead}
        row = self._one("make_done_partitions", params, connection)
        return int(row["made"]) if row else 0

    def drop_done_partitions(
        self, *, succeeded_hours: float, connection: Conn | None = None
    ) -> list[str]:
        """Drop the history's partitions wholly past the retention; their names."""
        params = {"succeeded_hours": succeeded_hours}
        rows = self._all("drop_done_partitions", params, connection)
        return [str(r["name"]) for r in rows]

    def prune_history(
        self,
        *,
        succeeded_hours: float,
        failed_hours: float | None,
        batch: int,
        connection: Conn | None = None,
    ) -> int:
        """Delete up to ``batch`` rows past their retention from the history's default
        partition and from the dead letter (each); how many."""
        params = {"succeeded_hours": succeeded_hours, "failed_hours": failed_hours, "batch": batch}
        row = self._one("prune_history", params, connection)
        return int(row["deleted"]) if row else 0

    def prune_finished(
        self,
        *,
        succeeded_hours: float,
        failed_hours: float | None,
        batch: int,
        connection: Conn | None = None,
    ) -> int:
        """Delete up to ``batch`` finished jobs past their retention from the jobs table
        (those not archived); how many."""
        params = {"succeeded_hours": succeeded_hours, "failed_hours": failed_hours, "batch": batch}
        return len(self._all("prune_finished", params, connection))

    def prune_workflows(
        self,
        *,
        succeeded_hours: float,
        failed_hours: float | None,
        batch: int,
        connection: Conn | None = None,
    ) -> tuple[int, int]:
        """Delete finished workflows past their retention, with their dependencies, up to
        about ``batch`` steps' worth (see the SQL): how many workflows, and how many steps
        they had (``batch`` or more when there may be more to prune)."""
        params = {"succeeded_hours": succeeded_hours, "failed_hours": failed_hours, "batch": batch}
        row = self._one("prune_workflows", params, connection)
        return (int(row["workflows"]), int(row["steps"])) if row else (0, 0)
