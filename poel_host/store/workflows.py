"""The store's statements for workflows (issue 20): enqueueing one whole, reading its state
and its steps, and the results a step reads of the steps it waits for. What releases a
waiting step is not here: the statements that end a step do it themselves (see
``steps_ended`` in migration 0023), so no worker runs anything more for it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from poel_host.errors import InvalidWorkflow
from poel_host.store.base import Conn, StoreBase


class WorkflowStore(StoreBase):
    """Workflows and their steps."""

    def enqueue_workflow(
        self, name: str, columns: dict[str, list[Any]], connection: Conn | None = None
    ) -> int:
        """Store a workflow whose steps are given as columns (``steps``, ``job_types``,
        ``afters``...: see ``enqueue_workflow`` in the SQL), all or nothing; its id.
        What the database refuses (a cycle, a step name used twice, a live job holding a
        step's unique key) is an InvalidWorkflow with the database's message."""
        try:
            row = self._one("enqueue_workflow", {"name": name, **columns}, connection)
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.UniqueViolation) as exc:
            raise InvalidWorkflow(exc.diag.message_primary or str(exc)) from exc
        assert row is not None and row["id"] is not None
        return int(row["id"])

    def get_workflow(self, workflow_id: int) -> dict[str, Any] | None:
        """The workflow's row, or None."""
        return self._one("get_workflow", {"id": workflow_id})

    def list_workflows(self, *, state: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest workflows first, optionally only those in ``state``."""
        return self._all("list_workflows", {"state": state, "limit": limit})

    def browse_workflows(
        self, *, state: str | None, before: int, limit: int, window: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The dashboard's workflows page: up to ``limit`` workflows newest first below id
        ``before``, optionally in ``state``, and where the next page starts (None: no
        older one). A page looks at ``window`` workflows at most (see the SQL)."""
        params = {"state": state, "before": before, "limit": limit, "window": window}
        found = self._all("dashboard_workflows", params)
        scanned, lowest = found[0]["scanned"], found[0]["lowest"]
        rows = [row for row in found if row["id"] is not None]
        if len(rows) == limit:
            return rows, rows[-1]["id"]
        return rows, (lowest if scanned == window else None)

    def workflow_steps(self, workflow_id: int) -> list[dict[str, Any]]:
        """The workflow's steps, live or archived, in the order they were enqueued."""
        return self._all("workflow_steps", {"id": workflow_id})

    def dependency_results(self, job_id: int, connection: Conn | None = None) -> dict[str, Any]:
        """Step name to result of the steps ``job_id`` waits for that succeeded (what
        ``ctx.dependency_results()`` returns)."""
        rows = self._all("dependency_results", {"id": job_id}, connection)
        return {row["step"]: row["result"] for row in rows if row["state"] == "succeeded"}
