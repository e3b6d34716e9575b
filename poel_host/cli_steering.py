"""The ``poel-host steer``, ``unsteer`` and ``steering`` commands (see
:mod:`poel_host.steering`).

Steering replaces a row whole (exit 0, the message says what holds now); unsteering what
is not steered exits 1 with a message, so that a script can tell; a value that cannot be
set exits 2.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from poel_host import cli_table
from poel_host.errors import PoelError
from poel_host.settings import Settings

if TYPE_CHECKING:
    from poel_host.queue import Queue


def cmd_steer(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.steering import describe, parse_key_weights, summary

    with _queue(settings) as queue:
        queue.steer(
            args.kind,
            args.name,
            concurrency=args.concurrency,
            rate=args.rate,
            per=args.per if args.per is not None else 1.0,
            per_key=args.per_key,
            fair=args.fair,
            weight=args.weight,
            key_weights=parse_key_weights(args.key_weight),
            key_field=args.key_field,
        )
        row = next(r for r in queue.steering() if (r["kind"], r["name"]) == (args.kind, args.name))
    print(
        f"steered {describe(args.kind, args.name)}: {summary(row)} "
        "(an operator's limit: no serve overwrites it until poel-host unsteer)"
    )
    return 0


def cmd_unsteer(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.steering import describe

    with _queue(settings) as queue:
        if not queue.unsteer(args.kind, args.name):
            raise PoelError(f"{describe(args.kind, args.name)} was not steered: nothing to remove")
    print(f"unsteered {describe(args.kind, args.name)}: its jobs are claimed without limits")
    return 0


def cmd_steering(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.steering import in_use_text, window_text

    with _queue(settings) as queue:
        rows = queue.steering()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("nothing is steered")
        return 0
    table = [("KIND", "NAME", "CONCURRENCY", "IN USE", "RATE/WINDOW", "PER_KEY", "FAIR", "SOURCE")]
    for r in rows:
        table.append(
            (
                r["kind"],
                r["name"],
                _concurrency(r),
                in_use_text(r),
                window_text(r),
                "yes" if r["per_key"] else "-",
                _fair(r),
                r["source"],
            )
        )
    print(cli_table.table(table))
    return 0


def _concurrency(row: dict[str, Any]) -> str:
    if row["concurrency"] is None:
        return "-"
    return str(row["concurrency"]) + (f" (weight {row['weight']})" if row["weight"] != 1 else "")


def _fair(row: dict[str, Any]) -> str:
    if not row["fair"]:
        return "-"
    weights = ",".join(f"{k}={w}" for k, w in sorted(row["key_weights"].items()))
    return f"yes ({weights})" if weights else "yes"


def _queue(settings: Settings) -> Queue:
    from poel_host.queue import Queue

    return Queue.for_settings(settings, {})
