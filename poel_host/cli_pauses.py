"""The ``poel-host pause``, ``resume`` and ``pauses`` commands (see :mod:`poel_host.pauses`).

Pausing twice is no error (the pause holds, exit 0, and the message says it was paused
already); resuming what is not paused exits 1 with a message, so that a script can tell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING

from poel_host import cli_table
from poel_host.errors import PoelError
from poel_host.settings import Settings

if TYPE_CHECKING:
    from poel_host.queue import Queue


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.pauses import describe

    kind, name = _target(args)
    with _queue(settings) as queue:
        if queue.pause(queue=args.queue, job_type=args.job_type, reason=args.reason, by=args.by):
            print(f"paused {describe(kind, name)}: its queued jobs wait until poel-host resume")
            return 0
        since = ""
        for pause in queue.pauses():
            if (pause.kind, pause.name) == (kind, name):
                since = (
                    f" since {pause.paused_at.isoformat(timespec='seconds')} by {pause.paused_by}"
                )
    print(f"{describe(kind, name)} was paused already{since}: nothing changed")
    return 0


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.pauses import describe

    with _queue(settings) as queue:
        if not queue.resume(queue=args.queue, job_type=args.job_type):
            raise PoelError(f"{describe(*_target(args))} was not paused: nothing to resume")
    print(f"resumed {describe(*_target(args))}")
    return 0


def cmd_pauses(settings: Settings, args: argparse.Namespace) -> int:
    with _queue(settings) as queue:
        pauses = queue.pauses()
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in pauses], indent=2, default=str))
        return 0
    if not pauses:
        print("nothing is paused")
        return 0
    rows = [("KIND", "NAME", "SINCE", "BY", "REASON")]
    for p in pauses:
        since = p.paused_at.isoformat(timespec="seconds")
        rows.append((p.kind, p.name, since, p.paused_by, p.reason or "-"))
    print(cli_table.table(rows))
    return 0


def _target(args: argparse.Namespace) -> tuple[str, str]:
    return ("queue", args.queue) if args.queue is not None else ("type", args.job_type)


def _queue(settings: Settings) -> Queue:
    from poel_host.queue import Queue

    return Queue.for_settings(settings, {})
