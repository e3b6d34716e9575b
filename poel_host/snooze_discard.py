"""What a handler raises to steer its own job: :class:`Snooze` (run me again later, this
attempt not counted) and :class:`Discard` (stop now: ``failed``, no retry).

Exceptions rather than return values, so that a handler deep in its own helpers can say it
where it finds out, and so that the same words work on every executor: the worker catches
them (a greenlet's or a thread's, see ``worker/executor.py``), and a process job's child
sends what they carry, the seconds or the reason, to serve as data (``worker/child.py``),
so that a plugin's subclass, even one serve cannot import, means the same there.

This module imports nothing heavy: a plugin imports these from ``poel_host``.
"""

from __future__ import annotations

import math

# The longest snooze: a year. A job that must wait longer is better enqueued with run_at
# when its time comes; a bound also keeps a value from a bug (1e300, a timestamp passed
# as seconds) from parking the job past anything the table can hold.
MAX_SNOOZE_S = 365 * 24 * 3600.0


def snooze_seconds(seconds: object) -> float:
    """``seconds`` as a float once checked: finite, from 0 to :data:`MAX_SNOOZE_S`.

    :raises ValueError: naming the bad value (the handler's error: its attempt counts).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"snooze seconds must be a number, got {seconds!r}")
    try:
        value = float(seconds)
    except OverflowError:  # an int past a float's range
        value = math.inf
    if not math.isfinite(value) or not 0 <= value <= MAX_SNOOZE_S:
        raise ValueError(
            f"snooze seconds must be a finite number from 0 to {MAX_SNOOZE_S:.0f} "
            f"(a year), got {seconds!r}"
        )
    return value


class Snooze(Exception):
    """Put this job back in the queue to run ``seconds`` from now; the attempt that raised
    it is not counted (``attempts`` stays, ``snoozes`` grows by one).

    ``ctx.snooze(seconds)`` raises it; so may a handler, or a subclass of it. A job snoozed
    ``Job(max_snoozes=...)`` times already fails instead (see the plugin authors' guide).
    """

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = snooze_seconds(seconds)
        super().__init__(self.seconds)

    def __str__(self) -> str:
        return f"snoozed for {self.seconds:g}s"


class Discard(Exception):
    """End this job ``failed`` now, without the retries it has left: retrying cannot help
    (the record it was about was deleted, the input is known bad). The reason is kept as
    the job's error, ``discarded: <reason>``."""


def seconds_of(snooze: Snooze) -> float:
    """The checked seconds of a raised ``snooze``: a plugin's subclass may have set them
    itself, or not at all.

    :raises ValueError: naming the class and the value (then the attempt fails).
    """
    try:
        return snooze_seconds(getattr(snooze, "seconds", None))
    except ValueError as exc:
        raise ValueError(f"{type(snooze).__name__}: {exc}") from None


def discard_error(exc: BaseException) -> str:
    """The error a discarded job keeps: ``discarded: <reason>`` (the class named when it
    is a plugin's subclass; the text made storable by the store, as every error)."""
    reason = str(exc)
    kind = type(exc).__name__
    if kind != "Discard":
        reason = f"{kind}: {reason}" if reason else kind
    return f"discarded: {reason}" if reason else "discarded"
