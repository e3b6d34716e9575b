"""The ``poel-host workflows list|show|cancel|retry`` commands (see
:mod:`poel_host.workflows`): the newest workflows with their state, one workflow's steps,
each with the steps it waits for, its state (``waiting`` while its dependencies have not
all ended), attempts, duration and error; and cancelling or retrying one whole (see
:mod:`poel_host.workflow_control`), with the sentence saying what changed. Cancelling
twice is no error (exit 0, "nothing changed"), as pausing twice is not."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from poel_host import cli_table
from poel_host.cli_store import with_store
from poel_host.errors import PoelError
from poel_host.settings import Settings

if TYPE_CHECKING:
    from poel_host.store import Store
    from poel_host.workflows import WorkflowState


def cmd_workflows(settings: Settings, args: argparse.Namespace) -> int:
    return with_store(settings, lambda store: _run(store, args))


def _run(store: Store, args: argparse.Namespace) -> int:
    from poel_host.workflow_control import WorkflowCancel, WorkflowRetry
    from poel_host.workflows import read_workflow

    if args.workflows_command == "cancel":
        print(WorkflowCancel.from_outcome(store.cancel_workflow(args.id)).message)
        return 0
    if args.workflows_command == "retry":
        print(WorkflowRetry.from_outcome(store.retry_workflow(args.id)).message)
        return 0
    if args.workflows_command == "show":
        state = read_workflow(store, args.id)
        if state is None:
            raise PoelError(
                f"no workflow with id {args.id} (never enqueued, or deleted past its retention)"
            )
        print(
            json.dumps(dataclasses.asdict(state), indent=2, default=str)
            if args.json
            else _shown(state)
        )
        return 0
    rows = store.list_workflows(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = [("ID", "NAME", "STATE", "STEPS LEFT", "CREATED", "FAILED STEP")]
    for r in rows:
        table.append(
            (
                str(r["id"]),
                r["name"],
                r["state"],
                f"{r['steps_left']}/{r['steps']}",
                r["created_at"].isoformat(timespec="seconds"),
                r["failed_step"] or "-",
            )
        )
    print(cli_table.table(table))
    return 0


def _shown(state: WorkflowState) -> str:
    head = f"workflow {state.id} {state.name!r}: {state.state}"
    if state.failed_step is not None:
        head += f" (step {state.failed_step} failed: {_line(state.failed_error)})"
    if state.cancelled_at is not None and state.finished_at is None:
        running = sum(1 for s in state.steps if s.state == "running")
        head += f", {running} running step{'' if running == 1 else 's'} being stopped"
    rows: list[tuple[str, ...]] = [
        ("STEP", "JOB", "TYPE", "STATE", "AFTER", "ATTEMPTS", "SECONDS", "ERROR")
    ]
    for s in state.steps:
        rows.append(
            (
                s.name,
                str(s.job_id),
                s.job_type,
                s.state,
                ",".join(s.after) or "-",
                f"{s.attempts}/{s.max_attempts}",
                "-" if s.duration is None else f"{s.duration:.3f}",
                _line(s.error)[:60] or "-",
            )
        )
    return head + "\n" + cli_table.table(rows)


def _line(text: Any) -> str:
    return " ".join(str(text or "").split())
