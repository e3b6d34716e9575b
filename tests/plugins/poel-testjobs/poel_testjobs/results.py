"""Job types returning results and reporting progress (issue 19), one per executor: the
plugin ``poel-testresults``, an entry point of its own so that other tests' workers keep
their lanes. One handler, driven by its payload, for all three."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

from poel_host import Job, JobContext, hookimpl


class Report(BaseModel):
    returns: Any = None  # the result (JSON from the payload)
    make: str = ""  # an unstorable result ("set", "nan", "nul", "huge", "object"), or
    # "nul_progress": a progress message holding a NUL
    steps: list[tuple[float, str | None]] = []  # ctx.progress calls, in order
    flood: int = 0  # then this many more calls, as fast as it can
    hold_until: str | None = None  # after reporting, wait for this file (20s at most)
    fail_first: bool = False  # raise on the first attempt (a retry returns the result)


def report(payload: Report, ctx: JobContext) -> Any:
    if payload.make == "nul_progress":  # a payload cannot carry a NUL: made here
        ctx.progress(0.5, "a\x00b" + "x" * 5000)
        return None
    for fraction, message in payload.steps:
        ctx.progress(fraction, message)
    for i in range(payload.flood):
        ctx.progress(i / payload.flood, f"flood {i}")
    if payload.fail_first and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    if payload.hold_until:
        deadline = time.monotonic() + 20
        while not os.path.exists(payload.hold_until) and time.monotonic() < deadline:
            time.sleep(0.02)
    made: dict[str, Any] = {
        "set": {1, 2},
        "nan": {"x": float("nan")},
        "nul": {"text": "a\x00b"},
        "huge": "x" * 2_000_000,
        "object": object(),
    }
    return made[payload.make] if payload.make else payload.returns


@hookimpl
def register_jobs() -> list[Job]:
    once = {"schema": Report, "handler": report, "max_attempts": 1, "timeout": 30}
    return [
        Job(type="results.greenlet", **once),  # type: ignore[arg-type]
        Job(type="results.thread", executor="thread", **once),  # type: ignore[arg-type]
        Job(type="results.process", executor="process", **once),  # type: ignore[arg-type]
        Job(type="results.retried", schema=Report, handler=report, max_attempts=2, backoff=0.05),
    ]
