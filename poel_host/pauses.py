"""Pausing a queue or a job type: what may be paused and how a pause reads.

A pause is a row of the pauses table (migration 0015), read by every claim itself (see
``claim_jobs`` in ``sql/queries.sql``): a paused queue's or type's queued jobs wait until
it is resumed, running ones finish, enqueueing and schedules go on. This module checks a
name before it is sent, so that a bad one gets one clear message instead of a driver or
constraint error; the database checks it again (the table's constraints), for the pause
that comes through SQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poel_host import payloads
from poel_host.errors import InvalidName
from poel_host.jobs import JOB_TYPE

if TYPE_CHECKING:
    from poel_host.store import Store

KINDS = ("queue", "type")
MAX_NAME_CHARS = 200  # as enqueue allows for a queue or a job type
MAX_BY_CHARS = 200
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Pause:
    """One paused queue (``kind="queue"``) or job type (``kind="type"``)."""

    kind: str
    name: str
    paused_at: dt.datetime
    paused_by: str
    reason: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Pause:
        return cls(**{k: row[k] for k in ("kind", "name", "paused_at", "paused_by", "reason")})


def describe(kind: str, name: str) -> str:
    """``job type 'x'`` or ``queue 'x'``: how messages name what is paused."""
    return f"{'job type' if kind == 'type' else 'queue'} {_show(name)}"


def target(queue: str | None, job_type: str | None) -> tuple[str, str]:
    """``(kind, name)`` for exactly one of ``queue`` and ``job_type``, checked."""
    if queue is not None and job_type is None:
        kind, name = "queue", queue
    elif job_type is not None and queue is None:
        kind, name = "type", job_type
    else:
        raise InvalidName("say what to pause or resume: one of queue=... or job_type=...")
    check_name(kind, name)
    return kind, name


def check_name(kind: str, name: object) -> None:
    """Refuse a name no job of ``kind`` could have, with one clear message."""
    if kind not in KINDS:
        raise InvalidName(f"cannot pause a {_show(kind)}: only a queue or a job type")
    what = "job type" if kind == "type" else "queue"
    if not isinstance(name, str):
        raise InvalidName(f"the {what} must be a string, got {_show(name)}")
    if not name:
        raise InvalidName(f"the {what} name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(
            f"the {what} name is {len(name)} characters, over the limit of {MAX_NAME_CHARS}"
        )
    problem = payloads.text_problem(name)
    if problem:
        raise InvalidName(f"the {what} name {problem}")
    if kind == "type" and not JOB_TYPE.fullmatch(name):
        raise InvalidName(
            f"job type {_show(name)} is not a valid name: 1-{MAX_NAME_CHARS} letters, "
            "digits and _ . : - (not starting with . : -)"
        )


def check_note(label: str, text: str | None, limit: int) -> None:
    """A pause's reason or author: optional text of at most ``limit`` characters."""
    if problem := payloads.optional_text_problem(f"the {label}", text, limit):
        raise InvalidName(problem)


_show = payloads.shown


class Pausing:
    """:class:`~poel_host.queue.Queue`'s pause methods (kept here, with what they check).
    The class using it sets ``_store`` (a :class:`~poel_host.store.Store`)."""

    _store: Store

    def pause(
        self,
        *,
        queue: str | None = None,
        job_type: str | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> bool:
        """Pause a queue or a job type on every worker: their queued jobs are not claimed
        from the moment this returns until :meth:`resume`; running jobs finish, jobs are
        still enqueued (and scheduled) and wait. A name no job has yet may be paused.
        True if this paused it, False if it was paused already (nothing changes then).
        ``by`` (default: the database user) and ``reason`` are shown in listings.
        Raises InvalidName for a name no job could have."""
        kind, name = target(queue, job_type)
        check_note("reason", reason, MAX_REASON_CHARS)
        check_note("author (by)", by, MAX_BY_CHARS)
        return self._store.pause(kind, name, reason=reason, paused_by=by)

    def resume(self, *, queue: str | None = None, job_type: str | None = None) -> bool:
        """Resume a paused queue or job type; idle workers are woken and claim its jobs at
        once. True if it was paused, False if it was not."""
        kind, name = target(queue, job_type)
        return self._store.resume(kind, name)

    def pauses(self) -> list[Pause]:
        """What is paused now, oldest first."""
        return [Pause.from_row(row) for row in self._store.list_pauses()]
