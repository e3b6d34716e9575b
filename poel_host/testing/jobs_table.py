"""What is in the jobs table, for ``enqueued`` and ``assert_enqueued``.

A test of code that enqueues (a handler's follow-up, an application's view) asserts on
the rows themselves, and a failed assertion lists the jobs that are there, so that a
wrong payload is plain to see rather than a bare ``assert 0 == 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poel_host.store import Store

Rows = list[dict[str, Any]]


def finder(store: Store) -> Callable[..., Rows]:
    """``find(job_type=None, state=None)``: the jobs in the table, oldest first."""

    def find(job_type: str | None = None, state: str | None = None) -> Rows:
        return store.find_jobs(job_type=job_type, state=state)

    return find


def checker(find: Callable[..., Rows]) -> Callable[..., Rows]:
    """``check(job_type, payload=None, *, count=None, state=None)``: see ``assert_enqueued``."""

    def check(
        job_type: str,
        payload: dict[str, Any] | None = None,
        *,
        count: int | None = None,
        state: str | None = None,
    ) -> Rows:
        rows = find(job_type, state)
        wanted = payload or {}
        matching = [
            row
            for row in rows
            if all(key in row["payload"] and row["payload"][key] == v for key, v in wanted.items())
        ]
        ok = len(matching) == count if count is not None else bool(matching)
        if not ok:
            expected = f"exactly {count}" if count is not None else "at least one"
            seen = "\n".join(
                f"  job {row['id']} ({row['state']}): {row['payload']}" for row in rows
            )
            raise AssertionError(
                f"expected {expected} {job_type!r} job(s)"
                + (f" with payload including {wanted}" if wanted else "")
                + (f" in state {state!r}" if state else "")
                + f", found {len(matching)}; {job_type!r} jobs enqueued:\n"
                + (seen or "  (none)")
            )
        return matching

    return check
