"""Cancelling and retrying a workflow as a whole (issue 20): :class:`WorkflowControl` gives
:class:`~poel_host.queue.Queue` ``cancel_workflow`` and ``retry_workflow``, and what each
answers (:class:`WorkflowCancel`, :class:`WorkflowRetry`) with the sentence an operator
reads (``poel-host workflows cancel|retry``).

The work is done by the SQL functions ``poel.cancel_workflow()`` and
``poel.retry_workflow()`` (migration 0025), one statement each, so that an application
calling them from SQL gets the same locks, in the same order, as Python and the CLI: the
workflow's row first, then its steps, as the statements that end steps take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poel_host.store import Store


def _steps(n: int, what: str = "step") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class WorkflowCancel:
    """What :meth:`Queue.cancel_workflow` did. ``cancelled``: steps (waiting or queued)
    cancelled now; ``stopping``: running steps asked to stop (now or by an earlier cancel)
    that have not ended yet: each ends ``cancelled`` (or ``succeeded``, had it returned
    first) within about a second, and the workflow is finished (``finished``) when the last
    has. ``changed`` is False when the workflow had been cancelled already, or had ended
    (its ``state`` then says how)."""

    workflow_id: int
    name: str
    state: str
    cancelled: int
    stopping: int
    finished: bool
    changed: bool

    @classmethod
    def from_outcome(cls, outcome: dict[str, Any]) -> WorkflowCancel:
        keep = ("workflow_id", "name", "state", "cancelled", "stopping", "finished", "changed")
        return cls(**{k: outcome[k] for k in keep})

    @property
    def message(self) -> str:
        """One line for an operator: what changed, and what is still to happen."""
        what = f"workflow {self.workflow_id} {self.name!r}"
        if self.state != "cancelled":
            return f"{what} had ended already ({self.state}): nothing to cancel"
        stopping = (
            f"; {_steps(self.stopping, 'running step')} asked to stop (each ends cancelled "
            f"within about a second; see poel-host workflows show {self.workflow_id})"
            if self.stopping
            else ""
        )
        if not self.changed:
            return f"{what} was cancelled already: nothing changed{stopping}"
        return f"{what} cancelled: {_steps(self.cancelled)} cancelled{stopping}"


@dataclass(frozen=True)
class WorkflowRetry:
    """What :meth:`Queue.retry_workflow` did: ``retried`` names the failed and cancelled
    steps queued again (in the order they were enqueued), ``due`` how many of them run now
    (the others wait for the retried steps they depend on). ``changed`` is False for a
    workflow that succeeded: it has nothing to retry."""

    workflow_id: int
    name: str
    state: str
    retried: tuple[str, ...]
    due: int
    changed: bool

    @classmethod
    def from_outcome(cls, outcome: dict[str, Any]) -> WorkflowRetry:
        return cls(
            workflow_id=outcome["workflow_id"],
            name=outcome["name"],
            state=outcome["state"],
            retried=tuple(outcome["retried"]),
            due=outcome["due"],
            changed=outcome["changed"],
        )

    @property
    def message(self) -> str:
        """One line for an operator: which steps run again."""
        what = f"workflow {self.workflow_id} {self.name!r}"
        if not self.changed:
            return f"{what} {self.state}: nothing to retry"
        shown = ", ".join(self.retried[:10]) + (", ..." if len(self.retried) > 10 else "")
        waiting = len(self.retried) - self.due
        return (
            f"{what} running again: {_steps(len(self.retried))} queued again ({shown}); "
            f"{self.due} due now, {waiting} waiting for the steps they depend on"
        )


class WorkflowControl:
    """:class:`~poel_host.queue.Queue`'s methods that cancel or retry a workflow whole.
    The class using it sets ``_store`` (a :class:`~poel_host.store.Store`)."""

    _store: Store

    def cancel_workflow(self, workflow_id: int) -> WorkflowCancel:
        """Cancel a workflow: its waiting and queued steps are ``cancelled`` at once, its
        running steps are asked to stop as :meth:`~poel_host.queue.Queue.cancel` asks a
        running job (the worker holding each stops it within about a second, on any
        executor; it ends ``cancelled``, or ``succeeded`` had it returned first). The
        workflow is ``cancelled`` from now on (``Queue.workflow(id).cancelled_at``), and
        finished (``finished_at``) once its last step ended. Its succeeded steps keep their
        results. Cancelling it again, or cancelling a workflow that ended, changes nothing
        (``.changed`` is False, ``.message`` says so).

        :raises poel_host.errors.WorkflowNotFound: no workflow has this id.
        """
        return WorkflowCancel.from_outcome(self._store.cancel_workflow(workflow_id))

    def retry_workflow(self, workflow_id: int) -> WorkflowRetry:
        """Run a failed or cancelled workflow again: its failed and cancelled steps are
        queued again with fresh attempts (their error history kept), each waiting again
        for the steps it depends on that run again with it; its succeeded steps are not run
        again and keep their results, which the steps run again read. The workflow is
        ``running`` again, its ``failed_step`` and ``failed_error`` cleared. A workflow that
        succeeded has nothing to retry (``.changed`` is False).

        :raises poel_host.errors.WorkflowRefused: it is running, or some of its steps still
            run (a step that runs anyway, a step being stopped): wait for them to end; or
            some of its steps were deleted past their retention.
        :raises poel_host.errors.WorkflowNotFound: no workflow has this id.
        """
        return WorkflowRetry.from_outcome(self._store.retry_workflow(workflow_id))
