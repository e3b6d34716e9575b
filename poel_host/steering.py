"""Steering a queue or a job type by hand: what an operator may set and how a row reads.

An operator's row of the steering table (``Queue.steer``, ``poel-host steer``,
``poel.steer()``; migration 0019) limits a job type's or a queue's running jobs and
starts on every worker at once, as a Job's own options do (:mod:`poel_host.job_steering`),
and wins over them: no serve overwrites it until it is removed by hand. This module
checks the values before they are sent, so that a bad one gets one clear message; the
table's constraints check them again for the row that comes through SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from poel_host import payloads
from poel_host.errors import InvalidSteering
from poel_host.pauses import check_name

if TYPE_CHECKING:
    from poel_host.store import Store

KINDS = ("queue", "type")
MAX_INT = 2**31 - 1  # a PostgreSQL integer
MAX_TEXT_CHARS = 200  # a key field's name, a key of key_weights (a job's key)

_show = payloads.shown


def describe(kind: str, name: str) -> str:
    """``job type 'x'`` or ``queue 'x'``: how messages name what is steered."""
    return f"{'job type' if kind == 'type' else 'queue'} {_show(name)}"


def _count(label: str, value: object, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        none = " (or None)" if optional else ""
        raise InvalidSteering(
            f"{label} must be an integer from 1 to {MAX_INT}{none}, got {_show(value)}"
        )


def _text(label: str, value: object) -> None:
    if value is not None and isinstance(value, str) and not value:
        raise InvalidSteering(f"{label} is empty")
    if problem := payloads.optional_text_problem(label, value, MAX_TEXT_CHARS):
        raise InvalidSteering(problem)


def checked(
    kind: str,
    name: str,
    *,
    concurrency: int | None = None,
    rate: int | None = None,
    per: float = 1.0,
    per_key: bool = False,
    fair: bool = False,
    weight: int = 1,
    key_weights: Mapping[str, int] | None = None,
    key_field: str | None = None,
) -> dict[str, Any]:
    """The arguments of ``poel.steer()`` for these options, or InvalidName (a bad kind or
    name) or InvalidSteering (a value that cannot be set), saying what to change."""
    if kind not in KINDS:
        raise InvalidSteering(f"cannot steer a {_show(kind)}: only a queue or a job type")
    check_name(kind, name)
    what = describe(kind, name)
    _count("concurrency", concurrency)
    _count("rate", rate)
    _count("weight", weight, optional=False)
    if isinstance(per, bool) or not isinstance(per, int | float) or not 0 < per < math.inf:
        raise InvalidSteering(f"per must be a positive number of seconds, got {_show(per)}")
    per_ms = round(per * 1000)
    if not 1 <= per_ms <= MAX_INT:
        raise InvalidSteering(f"per must be from 0.001 to {MAX_INT // 1000} seconds, got {per}")
    if rate is None and per != 1.0:
        raise InvalidSteering(f"per is the window of a rate: give rate= too (for {what})")
    if concurrency is not None and weight > concurrency:
        raise InvalidSteering(
            f"weight {weight} is more than the concurrency {concurrency}: no job of {what} "
            "could ever start; lower the weight or raise the concurrency"
        )
    for flag, on in (("per_key", per_key), ("fair", fair)):
        if not isinstance(on, bool):
            raise InvalidSteering(f"{flag} must be True or False, got {_show(on)}")
        if on and kind != "type":
            raise InvalidSteering(
                f"{flag} groups a job type's jobs by their key: steer the job type, not {what}"
            )
    if kind == "queue" and weight != 1:
        raise InvalidSteering(
            f"weight is how many slots a job type's jobs take: set it on the job type, "
            f"not on {what}"
        )
    if kind == "queue" and key_field is not None:
        raise InvalidSteering(f"key_field gives a job type's jobs their key, not {what}'s")
    if per_key and concurrency is None and rate is None:
        raise InvalidSteering(
            f"per_key holds a concurrency or a rate for each key of {what}: give one"
        )
    if concurrency is None and rate is None and not fair:
        raise InvalidSteering(
            f"nothing to steer {what} by: give a concurrency, a rate, or fair=True "
            "(poel-host unsteer removes a steering)"
        )
    _text("key_field", key_field)
    if key_weights is not None:
        if not fair:
            raise InvalidSteering("key_weights weigh the keys of fair shares: set fair too")
        if not isinstance(key_weights, Mapping):
            raise InvalidSteering(f"key_weights must map keys to weights, got {_show(key_weights)}")
        for key, key_weight in key_weights.items():
            _text("a key of key_weights", key)
            _count(f"the weight of key {_show(key)}", key_weight, optional=False)
    return {
        "kind": kind,
        "name": name,
        "concurrency": concurrency,
        "rate": rate,
        "per_ms": per_ms if rate is not None else None,
        "per_key": per_key,
        "fair": fair,
        "weight": weight,
        "key_weights": dict(key_weights) if key_weights is not None else None,
        "key_field": key_field,
    }


def parse_key_weights(pairs: Iterable[str] | None) -> dict[str, int] | None:
    """``["big=3", "small=1"]`` (the CLI's ``--key-weight``, the dashboard's list) as
    ``{"big": 3, "small": 1}``; None for none."""
    weights: dict[str, int] = {}
    for pair in pairs or ():
        key, sep, number = pair.strip().rpartition("=")
        if not sep or not key or not number.strip().isdigit():
            raise InvalidSteering(f"a key weight is KEY=N (N a whole number), got {_show(pair)}")
        weights[key] = int(number)
    return weights or None


def check_target(kind: str, name: str) -> None:
    """Refuse a kind or a name nothing could be steered by (for unsteer)."""
    if kind not in KINDS:
        raise InvalidSteering(f"cannot steer a {_show(kind)}: only a queue or a job type")
    check_name(kind, name)


def summary(row: Mapping[str, Any]) -> str:
    """A steering row's limits in words: ``at most 5 slots (weight 2 a job), 10 starts
    per 1s, per key, fair``."""
    parts = []
    if row.get("concurrency") is not None:
        parts.append(f"at most {row['concurrency']} running")
        if row.get("weight", 1) != 1:
            parts[-1] = f"at most {row['concurrency']} slots ({row['weight']} a job)"
    if row.get("rate") is not None:
        parts.append(f"{row['rate']} starts per {per_text(row['per_ms'])}")
    if row.get("per_key"):
        parts.append("for each key")
    if row.get("fair"):
        parts.append("fair shares between keys")
    return ", ".join(parts) or "no limit"


def in_use_text(row: Mapping[str, Any]) -> str:
    """What a row's concurrency gate holds now: ``4/6`` slots, or for a per_key limit
    ``2 keys, busiest 2/3``; just the slots running when there is no limit."""
    limit = f"/{row['concurrency']}" if row.get("concurrency") is not None else ""
    if row.get("per_key"):
        keys = row["running_keys"]
        return f"{keys} key{'' if keys == 1 else 's'}, busiest {row['busiest_key']}{limit}"
    return f"{row['running']}{limit}"


def window_text(row: Mapping[str, Any]) -> str:
    """How full a row's rate window is: ``3/5 per 1s`` (a per_key rate: the busiest
    key's), ``-`` without a rate."""
    if row.get("rate") is None:
        return "-"
    return f"{row['window_starts']}/{row['rate']} per {per_text(row['per_ms'])}"


def per_text(per_ms: int) -> str:
    """A window in seconds as short as it reads: ``1s``, ``0.5s``, ``60s``."""
    return f"{per_ms / 1000:g}s"


class Steering:
    """:class:`~poel_host.queue.Queue`'s steering methods (kept here, with what they
    check). The class using it sets ``_store`` (a :class:`~poel_host.store.Store`)."""

    _store: Store

    def steer(
        self,
        kind: str,
        name: str,
        *,
        concurrency: int | None = None,
        rate: int | None = None,
        per: float = 1.0,
        per_key: bool = False,
        fair: bool = False,
        weight: int = 1,
        key_weights: Mapping[str, int] | None = None,
        key_field: str | None = None,
    ) -> None:
        """Steer a job type (``kind="type"``) or a queue (``kind="queue"``) on every
        worker, from the next claim on: at most ``concurrency`` slots running (each job of
        the type takes ``weight``), at most ``rate`` starts per ``per`` seconds; for a
        type, ``per_key`` holds these for each job key apart and ``fair`` claims its keys
        in weighted turn (``key_weights``: key to weight, 1 for the rest); ``key_field``
        names the payload field that gives a job its key at enqueue.

        The row is the operator's: it replaces whatever was set (by hand or by a Job's
        options) whole, and no serve overwrites it until :meth:`unsteer`. Raises
        InvalidName or InvalidSteering, saying what to change."""
        params = checked(
            kind,
            name,
            concurrency=concurrency,
            rate=rate,
            per=per,
            per_key=per_key,
            fair=fair,
            weight=weight,
            key_weights=key_weights,
            key_field=key_field,
        )
        self._store.steer(params)

    def unsteer(self, kind: str, name: str) -> bool:
        """Remove a job type's or a queue's steering, whoever set it: True if it was
        steered, False if it was not. A type whose Job declares options gets them back
        when a serve that loads it next starts."""
        check_target(kind, name)
        return self._store.unsteer(kind, name)

    def steering(self) -> list[dict[str, Any]]:
        """Every steered job type and queue (by kind, then name): the row's columns
        (``kind``, ``name``, ``concurrency``, ``weight``, ``rate``, ``per_ms``, ``per_key``,
        ``fair``, ``key_weights``, ``key_field``, ``source``, ``set_at``, ``set_by``), ``per``
        (the window in seconds), and what is in use now: ``running`` (slots its running
        jobs take), ``running_keys`` and ``busiest_key`` (keys with running jobs, the most
        slots one key takes) and ``window_starts`` (starts in the current window; the
        busiest key's for a per_key rate)."""
        return [
            {**row, "per": row["per_ms"] / 1000 if row["per_ms"] is not None else None}
            for row in self._store.list_steering()
        ]
