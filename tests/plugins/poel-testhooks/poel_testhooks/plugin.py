"""Lifecycle hooks for poel-host's tests, kept apart from ``poel-testjobs`` so that only
the tests that load this plugin (``POEL_LOAD_PLUGINS=poel-testhooks``) run them.

The hooks act only on this plugin's own job types, so a test session that loads every
installed plugin (the default) is not affected by them:

- ``testhooks.started_raises``: ``job_started`` raises an exception whose ``str()`` raises;
- ``testhooks.finished_raises``: ``job_finished`` does the same;
- ``testhooks.probe``: ``job_started`` reads the ``statement_timeout`` of a
  ``ctx.connection()`` and runs a 50 ms query on it, and logs both as
  ``testhooks probe`` (``statement_timeout_ms``, ``sleep``).

Each handler does nothing.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from poel_host import Job, JobContext, hookimpl

STARTED_RAISES = "testhooks.started_raises"
FINISHED_RAISES = "testhooks.finished_raises"
PROBE = "testhooks.probe"


class Empty(BaseModel):
    key: str = ""


class Unprintable(Exception):
    """An exception that cannot be turned into text: ``str()`` (and so ``f"{exc}"``) raises."""

    def __str__(self) -> str:
        raise RuntimeError("Unprintable.__str__ raised")


def noop(payload: Empty, ctx: JobContext) -> None:
    pass


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(type=STARTED_RAISES, schema=Empty, handler=noop, max_attempts=1),
        Job(type=FINISHED_RAISES, schema=Empty, handler=noop, max_attempts=1),
        Job(type=PROBE, schema=Empty, handler=noop, max_attempts=1),
    ]


_UNITS_MS = {"": 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _milliseconds(shown: str) -> int:
    """``SHOW statement_timeout`` as milliseconds ("1ms", "59998ms", "1min", "0")."""
    match = re.fullmatch(r"(\d+)\s*(ms|s|min|h|d)?", shown.strip())
    if not match:
        raise ValueError(f"unexpected statement_timeout {shown!r}")
    return int(match.group(1)) * _UNITS_MS[match.group(2) or ""]


@hookimpl
def job_started(ctx: Any) -> None:
    if ctx.job_type == STARTED_RAISES:
        raise Unprintable()
    if ctx.job_type == PROBE:
        timeout_ms: int | str
        try:
            with ctx.connection() as conn:
                row = conn.execute("SHOW statement_timeout").fetchone()
                shown = row["statement_timeout"] if isinstance(row, dict) else row[0]
            timeout_ms = _milliseconds(shown)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            timeout_ms = f"{type(exc).__name__}: {exc}"
        try:
            with ctx.connection() as conn:
                conn.execute("SELECT pg_sleep(0.05)")
            sleep = "ok"
        except Exception as exc:  # noqa: BLE001 - reported to the test
            sleep = f"{type(exc).__name__}: {exc}"
        ctx.log.warning("testhooks probe", statement_timeout_ms=timeout_ms, sleep=sleep)


@hookimpl
def job_finished(ctx: Any) -> None:
    if ctx.job_type == FINISHED_RAISES:
        raise Unprintable()
