"""The store's statements for people: looking at jobs and changing them by hand, from the
CLI, the dashboard (its pages, bulk retry, deletion, audit log), the queue client's cancel
and retry, and the test kit. None runs on a job's way through a worker (:mod:`.jobs`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from poel_host.errors import PoelError
from poel_host.store.base import Conn, StoreBase


class OperatorStore(StoreBase):
    """Looking at and changing jobs: the CLI, the test kit, the dashboard."""

    # Looking and changing (CLI, test kit) -----------------------------------------------

    def get_job(self, job_id: int, connection: Conn | None = None) -> dict[str, Any] | None:
        """One job by id, live or finished, with its result and progress."""
        return self._one("get_job", {"id": job_id}, connection)

    def list_jobs(
        self, *, state: str | None = None, job_type: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Recent jobs, newest first."""
        return self._all("list_jobs", {"state": state, "job_type": job_type, "limit": limit})

    def find_jobs(
        self, *, job_type: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobs oldest first, with their payloads."""
        return self._all("find_jobs", {"job_type": job_type, "state": state})

    def count_by_state(self) -> dict[str, int]:
        return {row["state"]: int(row["count"]) for row in self._all("count_by_state")}

    def cancel_job(self, job_id: int) -> str | None:
        """Cancel a job: ``"cancelled"`` (it was queued), ``"requested"`` (it is running:
        the worker holding it stops it), or None (unknown or finished)."""
        row = self._one("cancel_job", {"id": job_id, "schema_name": self.schema})
        return None if row is None else str(row["outcome"])

    def retry_job(self, job_id: int, connection: Conn | None = None) -> bool:
        """Queue a failed or cancelled job again with fresh attempts, wherever it is;
        False if it is not failed or cancelled."""
        try:
            return self._one("retry_job", {"id": job_id}, connection) is not None
        except psycopg.errors.UniqueViolation:
            raise PoelError(
                f"job {job_id} cannot be retried: a live job of its type holds its unique_key"
            ) from None

    def make_due(self, job_id: int) -> bool:
        """Make a queued job due now; False if it is not queued."""
        return self._one("make_due", {"id": job_id}) is not None

    # The dashboard ----------------------------------------------------------------------

    def running_counts(self) -> list[dict[str, Any]]:
        return self._all("dashboard_running_counts")

    def failed_counts(self) -> dict[str, int]:
        return {r["job_type"]: int(r["count"]) for r in self._all("dashboard_failed_counts")}

    def finished_last_hour(self) -> list[dict[str, Any]]:
        """``[{queue, job_type, state, minute, count}]`` for jobs finished in the last hour."""
        return self._all("dashboard_last_hour")

    def browse_jobs(
        self,
        *,
        state: str | None,
        job_type: str | None,
        queue: str | None,
        error: str | None,
        before: int,
        limit: int,
        window: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The jobs page: up to ``limit`` jobs newest first below id ``before``, filtered,
        and where the next page starts (None: no older job). Failed jobs are found through
        their own index; other filters look at ``window`` jobs at most (see the SQL)."""
        params = {
            "state": state,
            "job_type": job_type,
            "queue": queue,
            "error": error,
            "before": before,
            "limit": limit,
            "window": window,
        }
        if state == "failed":  # the dead letter's own index
            rows = self._all("dashboard_failed_jobs", params)
            return rows, (rows[-1]["id"] if len(rows) == limit else None)
        found = self._all("dashboard_jobs", params)
        scanned, lowest = found[0]["scanned"], found[0]["lowest"]
        rows = [row for row in found if row["id"] is not None]
        if len(rows) == limit:
            return rows, rows[-1]["id"]
        return rows, (lowest if scanned == window else None)

    def running_jobs(self, *, limit: int) -> list[dict[str, Any]]:
        return self._all("dashboard_running", {"limit": limit})

    def last_slots(self) -> dict[str, Any]:
        return {r["job_type"]: r["slot"] for r in self._all("dashboard_last_slots")}

    def delete_finished_job(self, job_id: int) -> dict[str, Any] | None:
        """Delete a finished job: ``{id, job_type}``, or None if it is not finished."""
        return self._one("dashboard_delete_job", {"id": job_id})

    def retry_failed_of_type(self, job_type: str) -> list[int]:
        """Queue every failed job of ``job_type`` again; their ids."""
        try:
            return sorted(self._ids("dashboard_retry_failed_type", {"job_type": job_type}))
        except psycopg.errors.UniqueViolation:
            raise PoelError(
                f"the failed {job_type} jobs cannot all be retried: a live job of that type "
                "holds the unique_key of one of them; retry them one by one"
            ) from None

    def audit(
        self,
        *,
        actor: str,
        address: str | None,
        action: str,
        job_id: int | None = None,
        job_type: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        params = {
            "actor": actor,
            "address": address,
            "action": action,
            "job_id": job_id,
            "job_type": job_type,
            "detail": Jsonb(detail or {}),
        }
        self._execute("dashboard_audit", params)

    def audit_log(self, *, limit: int) -> list[dict[str, Any]]:
        return self._all("dashboard_audit_log", {"limit": limit})
