"""The store's statements for workflows (issue 20): enqueueing one whole, reading its state
and its steps, the results a step reads of the steps it waits for, and cancelling or
retrying one whole (migration 0025). What releases a waiting step is not here: the
statements that end a step do it themselves (see ``steps_ended`` in migration 0023), so no
worker runs anything more for it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from poel_host.errors import InvalidWorkflow, PoelError, WorkflowNotFound, WorkflowRefused
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

    def cancel_workflow(self, workflow_id: int) -> dict[str, Any]:
        """Cancel the workflow (``poel.cancel_workflow``): what changed, as the SQL function
        says it (``state``, ``cancelled``, ``stopping``, ``finished``, ``changed``).
        WorkflowNotFound for an unknown id."""
        return self._control("cancel_workflow", workflow_id)

    def retry_workflow(self, workflow_id: int) -> dict[str, Any]:
        """Retry the workflow (``poel.retry_workflow``): the names of the steps queued
        again (``retried``), how many are due now (``due``), ``changed``. WorkflowNotFound
        for an unknown id; WorkflowRefused while it runs or lost steps to retention."""
        return self._control("retry_workflow", workflow_id)

    def _control(self, name: str, workflow_id: int) -> dict[str, Any]:
        query = self._q[name]

        # The refusals are caught on the connection, before _run takes their class (the
        # server's class 55, psycopg's OperationalError) for an outage.
        def work(conn: Conn) -> dict[str, Any]:
            try:
                cur = conn.cursor(row_factory=dict_row).execute(query, {"id": workflow_id})
                found = cur.fetchone()
            except psycopg.errors.NoDataFound:
                raise WorkflowNotFound(workflow_id) from None
            except (
                psycopg.errors.ObjectNotInPrerequisiteState,
                psycopg.errors.UniqueViolation,
            ) as exc:
                raise WorkflowRefused(_said(exc)) from None
            except psycopg.errors.LockNotAvailable as exc:
                raise PoelError(_said(exc)) from None
            assert found is not None
            return dict(found["outcome"])

        return self._run(work)


def _said(exc: psycopg.Error) -> str:
    """The database's message, with its hint when it gives one."""
    text = exc.diag.message_primary or str(exc)
    return f"{text} ({exc.diag.message_hint})" if exc.diag.message_hint else text
