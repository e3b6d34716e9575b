"""What one job request may hold (:class:`JobRequest`), checked before anything is sent:
the arguments ``Queue.enqueue`` and ``enqueue_many`` take, refused with an
:class:`~poel_host.errors.InvalidPayload` naming the argument when PostgreSQL would reject
them with a driver error or quietly reinterpret them."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from poel_host import payloads
from poel_host.errors import InvalidPayload
from poel_host.jobs import JOB_TYPE
from poel_host.storable import INT4_MAX


@dataclass
class JobRequest:
    """One job to enqueue with :meth:`Queue.enqueue_many`."""

    type: str
    payload: Any = None
    run_at: dt.datetime | None = None
    delay: float | dt.timedelta | None = None
    priority: int | None = None
    queue: str | None = None
    max_attempts: int | None = None
    unique_key: str | None = None
    key: str | None = None  # its key (a tenant, a record): per-key limits, fair shares


def delay_ms(job_type: str, delay: float | dt.timedelta | None) -> int:
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    if seconds < 0:
        raise InvalidPayload(f"delay must not be negative, got {seconds:g}s", job_type=job_type)
    return int(seconds * 1000)


MAX_DELAY_S = 100 * 366 * 86400
MAX_NAME_CHARS = 200
MAX_UNIQUE_KEY_CHARS = 1000  # the live-unique index holds it: btree rows stop near 2.7 kB


def check_request(request: JobRequest) -> None:
    """Refuse arguments PostgreSQL would reject with a driver error (a NUL byte, a number
    out of range) or quietly reinterpret (a run_at of 'tomorrow', a priority of True),
    before anything is sent. Each refusal is an InvalidPayload naming the argument."""
    job_type = request.type
    if not isinstance(job_type, str) or not JOB_TYPE.fullmatch(job_type):
        raise InvalidPayload(
            f"job type {_show(job_type)} is not a valid name: 1-{MAX_NAME_CHARS} letters, "
            "digits and _ . : - (not starting with . : -)",
            job_type=_show(job_type),
        )

    def refuse(problem: str) -> InvalidPayload:
        return InvalidPayload(f"cannot enqueue {job_type!r}: {problem}", job_type=job_type)

    for name, value, low in (
        ("priority", request.priority, -INT4_MAX - 1),
        ("max_attempts", request.max_attempts, 1),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"{name} must be an integer, got {_show(value)}")
        if value < low:
            raise refuse(f"{name} must be at least {low}")
        if value > INT4_MAX:
            raise refuse(f"{name} must be at most {INT4_MAX}")
    for name, text, limit in (
        ("queue", request.queue, MAX_NAME_CHARS),
        ("unique_key", request.unique_key, MAX_UNIQUE_KEY_CHARS),
        ("key", request.key, MAX_NAME_CHARS),
    ):
        if problem := payloads.optional_text_problem(name, text, limit):
            raise refuse(problem)
    if request.run_at is not None and not isinstance(request.run_at, dt.datetime):
        raise refuse(f"run_at must be a datetime, got {_show(request.run_at)}")
    delay = request.delay
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float | dt.timedelta):
            raise refuse(f"delay must be seconds or a timedelta, got {_show(delay)}")
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
        if not math.isfinite(seconds) or seconds > MAX_DELAY_S:
            raise refuse(f"delay must be at most 100 years, got {_show(delay)}")


_show = payloads.shown
