"""Workflows (issue 20): jobs that wait for each other, pass their results on, and fail as
a whole. :class:`Workflow` builds one in Python; :meth:`poel_host.Queue.enqueue_workflow`
stores it in one statement (``poel.enqueue_workflow()`` from SQL); :meth:`Queue.workflow`
reads it back as a :class:`WorkflowState`.

A step names the steps it waits for with ``after=``, which takes steps already made: a
workflow built here can have no cycle and no dependency on a step it lacks. The database
checks both again, for the workflows that come through SQL. Payloads are validated where
``Queue.enqueue`` validates them (the installed plugins' models), by the same code.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from poel_host import payloads
from poel_host.errors import InvalidWorkflow
from poel_host.job_requests import JobRequest

if TYPE_CHECKING:
    from poel_host.store import Store

MAX_NAME_CHARS = 200  # a workflow's name and a step's, as the tables check them
WORKFLOW_STATES = ("running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Step:
    """One step of a :class:`Workflow`: a job request with a name, and the names of the
    steps it waits for. Returned by :meth:`Workflow.step`; pass it to ``after=``."""

    name: str
    request: JobRequest
    after: tuple[str, ...] = ()
    run_anyway: bool = False
    workflow: Workflow | None = field(default=None, repr=False, compare=False)


After = Step | str | Iterable[Step | str]


class Workflow:
    """A workflow being built: steps, each a job, that wait for the steps they name.

    ::

        flow = Workflow("ingest")
        record = flow.step("record", "process_new_record", {"record_id": 7})
        prints = flow.step("fingerprint", "fingerprint", {"record_id": 7}, after=record)
        stems = flow.step("stems", "separate_stems", {"record_id": 7}, after=record)
        flow.step("merge", "merge_metadata", {"record_id": 7}, after=[prints, stems])
        workflow_id = queue.enqueue_workflow(flow)
    """

    def __init__(self, name: str) -> None:
        if problem := payloads.optional_text_problem("a workflow's name", name, MAX_NAME_CHARS):
            raise InvalidWorkflow(problem)
        if not name:
            raise InvalidWorkflow("a workflow needs a name")
        self.name = name
        self.steps: list[Step] = []
        self._names: set[str] = set()

    def step(
        self,
        name: str,
        job_type: str,
        payload: Any = None,
        *,
        after: After = (),
        run_anyway: bool = False,
        run_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        unique_key: str | None = None,
        key: str | None = None,
    ) -> Step:
        """Add a step: a job of ``job_type`` (options as :meth:`Queue.enqueue` takes them)
        that waits until every step in ``after`` succeeded. With ``run_anyway`` it runs
        even when one of them failed or was cancelled (it is not cancelled with them).
        ``run_at`` and ``delay`` are for a step that waits for nothing."""
        if problem := payloads.optional_text_problem("a step's name", name, MAX_NAME_CHARS):
            raise InvalidWorkflow(f"workflow {self.name!r}: {problem}")
        if not name:
            raise InvalidWorkflow(f"workflow {self.name!r}: a step needs a name")
        if name in self._names:
            raise InvalidWorkflow(f"workflow {self.name!r}: step {name!r} is added twice")
        waits = self._names_of(name, after)
        if waits and (run_at is not None or delay is not None):
            raise InvalidWorkflow(
                f"workflow {self.name!r}, step {name!r}: run_at and delay are for a step "
                "that waits for nothing (a waiting step runs when its dependencies release it)"
            )
        if not isinstance(run_anyway, bool):
            raise InvalidWorkflow(f"workflow {self.name!r}, step {name!r}: run_anyway is a bool")
        request = JobRequest(
            job_type, payload, run_at, delay, priority, queue, max_attempts, unique_key, key
        )
        made = Step(name, request, waits, run_anyway, self)
        self.steps.append(made)
        self._names.add(name)
        return made

    def chain(self, *links: tuple[Any, ...], after: After = ()) -> list[Step]:
        """Steps that run one after the other: each link is ``(name, job_type)`` or
        ``(name, job_type, payload)``; the first waits for ``after``. The steps, in order."""
        made: list[Step] = []
        for link in links:
            if not isinstance(link, tuple) or len(link) not in (2, 3):
                raise InvalidWorkflow(
                    f"workflow {self.name!r}: a chain's link is (name, job_type) or "
                    f"(name, job_type, payload), got {payloads.shown(link)}"
                )
            made.append(self.step(*link, after=made[-1] if made else after))
        return made

    def fan_out(
        self, name: str, job_type: str, items: Sequence[Any], *, after: After = (), **options: Any
    ) -> list[Step]:
        """One step for each payload of ``items``, side by side, each waiting for
        ``after``; named ``name[0]``, ``name[1]``... Pass the list to a later step's
        ``after=`` to fan in."""
        return [
            self.step(f"{name}[{i}]", job_type, payload, after=after, **options)
            for i, payload in enumerate(items)
        ]

    def _names_of(self, name: str, after: After) -> tuple[str, ...]:
        items: Iterable[Step | str] = [after] if isinstance(after, Step | str) else after
        names: list[str] = []
        for item in items:
            if isinstance(item, Step):
                if item.workflow is not self:
                    raise InvalidWorkflow(
                        f"workflow {self.name!r}, step {name!r}: waits for step "
                        f"{item.name!r} of another workflow"
                    )
                item = item.name
            if not isinstance(item, str) or item not in self._names:
                raise InvalidWorkflow(
                    f"workflow {self.name!r}, step {name!r}: waits for "
                    f"{payloads.shown(item)}, which is not a step added before it"
                )
            if item not in names:
                names.append(item)
        return tuple(names)


def workflow_columns(flow: Workflow, job_columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The parameters of ``enqueue_workflow`` (the SQL): the steps' job columns as the
    queue client made them (validated, with their Jobs' defaults), and each step's name,
    dependencies (a JSON array) and run_anyway."""
    if not flow.steps:
        raise InvalidWorkflow(f"workflow {flow.name!r} has no steps")
    return {
        **job_columns,
        "steps": [s.name for s in flow.steps],
        "afters": [json.dumps(list(s.after)) for s in flow.steps],
        "run_anyway": [s.run_anyway for s in flow.steps],
    }


@dataclass(frozen=True)
class StepState:
    """One step of a workflow as :meth:`Queue.workflow` reads it. ``state`` is the job's,
    or ``waiting`` for a queued step whose dependencies have not all ended."""

    name: str
    job_id: int
    job_type: str
    state: str
    after: tuple[str, ...]
    attempts: int
    max_attempts: int
    error: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def duration(self) -> float | None:
        """Seconds from its last start to its end (None until both happened)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StepState:
        waiting = row["state"] == "queued" and (row["waiting_on"] or 0) > 0
        return cls(
            name=row["step"],
            job_id=int(row["id"]),
            job_type=row["job_type"],
            state="waiting" if waiting else row["state"],
            after=tuple(row["after"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            error=row["last_error"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True)
class WorkflowState:
    """A workflow as :meth:`Queue.workflow` reads it: ``state`` is ``running``,
    ``succeeded`` (every step did), ``failed`` (``failed_step`` failed or was cancelled,
    for the reason ``failed_error``; set at that failure, while the steps that run anyway
    may still run) or ``cancelled`` (by :meth:`Queue.cancel_workflow` at ``cancelled_at``;
    a failure before it is kept). ``finished_at`` is set once every step ended: a
    cancelled workflow without it still has running steps being stopped."""

    id: int
    name: str
    state: str
    failed_step: str | None
    failed_error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    steps: tuple[StepState, ...]
    cancelled_at: dt.datetime | None = None

    def step(self, name: str) -> StepState:
        """The step named ``name`` (KeyError if the workflow has none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @classmethod
    def from_rows(cls, row: dict[str, Any], steps: list[dict[str, Any]]) -> WorkflowState:
        keep = ("id", "name", "state", "failed_step", "failed_error", "created_at", "finished_at")
        return cls(
            **{k: row[k] for k in keep},
            steps=tuple(StepState.from_row(s) for s in steps),
            cancelled_at=row.get("cancelled_at"),
        )


def read_workflow(store: Store, workflow_id: int) -> WorkflowState | None:
    """The workflow and its steps as the store reads them (Queue.workflow, the CLI)."""
    row = store.get_workflow(workflow_id)
    if row is None:
        return None
    return WorkflowState.from_rows(row, store.workflow_steps(workflow_id))
