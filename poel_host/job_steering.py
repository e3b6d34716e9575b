"""A job type's steering as its plugin declares it (``Job(concurrency=..., rate=...,
key=..., fair=...)``): the checks of those options, a job's key read from its payload,
and the rows a serve writes to the ``steering`` table at start.

The database enforces what the rows say (``claim_steered``, migration 0020), so a limit
declared here holds across every serve. A row an operator set (``poel-host steer``,
``Queue.steer``, ``poel.steer()``) wins over the code's: a serve never overwrites it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Job(Protocol):
    """What of a :class:`poel_host.jobs.Job` this module reads: its name and steering
    options (a protocol, so that jobs.py, which checks them here, is not imported back)."""

    @property
    def type(self) -> str: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def weight(self) -> int: ...
    @property
    def rate(self) -> int | None: ...
    @property
    def per(self) -> float: ...
    @property
    def key(self) -> str | None: ...
    @property
    def per_key(self) -> bool: ...
    @property
    def fair(self) -> bool: ...
    @property
    def key_weights(self) -> Mapping[str, int] | None: ...


MAX_KEY_CHARS = 200  # a job's key is in an index (jobs_keyed_idx)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def steering_problems(job: Job) -> list[str]:
    """What is wrong with a Job's steering options, as sentences for its ValueError."""
    problems = []
    if job.concurrency is not None and not _count(job.concurrency):
        problems.append(f"concurrency must be an integer >= 1 or None, got {job.concurrency!r}")
    if not _count(job.weight):
        problems.append(f"weight must be an integer >= 1, got {job.weight!r}")
    elif job.concurrency is not None and _count(job.concurrency) and job.weight > job.concurrency:
        problems.append(
            f"weight {job.weight} is more than the concurrency {job.concurrency}: no job "
            "could ever start"
        )
    if job.rate is not None and not _count(job.rate):
        problems.append(f"rate must be an integer >= 1 or None, got {job.rate!r}")
    if not (isinstance(job.per, int | float) and not isinstance(job.per, bool) and job.per > 0):
        problems.append(f"per must be a positive number of seconds, got {job.per!r}")
    elif round(job.per * 1000) < 1:
        problems.append(f"per must be at least a millisecond, got {job.per!r}")
    if job.key is not None and not (isinstance(job.key, str) and 0 < len(job.key) <= 200):
        problems.append(f"key must name a payload field (1-200 characters), got {job.key!r}")
    if (job.per_key or job.fair) and job.key is None:
        problems.append("per_key and fair group jobs by their key: name its field with key=")
    if job.per_key and job.concurrency is None and job.rate is None:
        problems.append("per_key applies a concurrency or a rate to each key: give one")
    if job.key_weights is not None:
        if not job.fair:
            problems.append("key_weights weigh the keys of fair shares: set fair=True")
        elif not isinstance(job.key_weights, dict) or not all(
            isinstance(k, str) and _count(w) for k, w in job.key_weights.items()
        ):
            problems.append("key_weights must map keys (str) to integer weights >= 1")
    return problems


def is_steered(job: Job) -> bool:
    return job.concurrency is not None or job.rate is not None or job.fair


def job_key(job: Job | None, body: Any) -> str | None:
    """A job's key from its payload's ``job.key`` field, as PostgreSQL's ``payload ->>
    field`` reads it (poel.enqueue does it that way): a string as it is, anything else
    as JSON; None when the Job names no field or the payload lacks it."""
    if job is None or job.key is None or not isinstance(body, dict):
        return None
    value = body.get(job.key)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_KEY_CHARS]


def declared_rows(jobs: Iterable[Job]) -> dict[str, list[Any]]:
    """The steering rows of the steered ``jobs``, as the columns ``declare_steering``
    takes; ``loaded`` names every type this serve handles (a type it no longer steers
    loses its code row)."""
    jobs = list(jobs)
    steered = [job for job in jobs if is_steered(job)]
    return {
        "loaded": [job.type for job in jobs],
        "types": [job.type for job in steered],
        "concurrency": [job.concurrency for job in steered],
        "weight": [job.weight for job in steered],
        "rate": [job.rate for job in steered],
        "per_ms": [round(job.per * 1000) if job.rate else None for job in steered],
        "per_key": [job.per_key for job in steered],
        "fair": [job.fair for job in steered],
        "key_weights": [json.dumps(job.key_weights or {}) for job in steered],
        "key_field": [job.key for job in steered],
    }
