"""Cron schedules for periodic jobs (parsed by croniter)."""

from __future__ import annotations

import datetime as dt


def validate_cron(expression: str) -> str | None:
    """None if ``expression`` is a valid cron expression, else the reason."""
    from croniter import croniter

    if not isinstance(expression, str) or not expression.strip():
        return "empty"
    try:
        croniter(expression, dt.datetime.now(dt.timezone.utc))
    except (ValueError, KeyError, TypeError) as exc:
        return str(exc) or type(exc).__name__
    return None


def next_slot(expression: str, after: dt.datetime) -> dt.datetime:
    """The first slot strictly after ``after``."""
    from croniter import croniter

    result: dt.datetime = croniter(expression, after).get_next(dt.datetime)
    return result


def latest_slot(expression: str, at: dt.datetime) -> dt.datetime:
    """The latest slot at or before ``at``."""
    from croniter import croniter

    probe = at.replace(microsecond=0) + dt.timedelta(seconds=1)
    result: dt.datetime = croniter(expression, probe).get_prev(dt.datetime)
    return result
