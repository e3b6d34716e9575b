"""Delays: a job's retry backoff (exponential, with jitter), and a service's pause after
consecutive errors."""

from __future__ import annotations

import random

from poel_host.jobs import Job
from poel_host.storable import storable_delay_ms


def retry_delay_ms(job: Job, attempt: int, *, base_ms: int, max_ms: int) -> int:
    """Milliseconds to wait before running ``job`` again after failed ``attempt`` (1-based).

    The delay doubles with each attempt and is spread by +-25% jitter so that jobs that
    failed together (an outage) do not all retry in the same instant. A job's ``backoff``
    replaces the base (seconds), or, as a function of the attempt, the whole schedule.
    """
    if callable(job.backoff):
        # Whatever the plugin's function returns (a huge number, inf, NaN, a negative):
        # a delay a timestamp can hold.
        return storable_delay_ms(float(job.backoff(attempt)) * 1000)
    base = base_ms if job.backoff is None else job.backoff * 1000
    delay = min(max_ms, base * 2 ** max(0, attempt - 1))
    return int(delay * random.uniform(0.75, 1.25))


def pause(failures: int) -> float:
    """Seconds a service waits after ``failures`` consecutive errors (0.2 s up to 5 s)."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 10)))
