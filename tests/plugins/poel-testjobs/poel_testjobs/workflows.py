"""Job types for workflow steps (issue 20), one per executor: the plugin
``poel-testworkflows``, an entry point of its own so that other tests' workers keep their
lanes. Each step returns its value and what it read of its dependencies' results, so a
test sees both what flowed in and what flows on; ``fail`` makes it raise instead, and
``fail_unless`` until a file the test makes exists (a step that a workflow's retry fixes);
``touch`` and ``wait_for`` make two steps meet (each ends only once the other started)."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

from poel_host import Job, JobContext, hookimpl


class StepPayload(BaseModel):
    value: Any = None  # returned as "value" in the result
    fail: bool = False  # raise (with max_attempts 1: the step fails for good)
    fail_unless: str | None = None  # raise while this file does not exist (then a retry runs)
    log: str | None = None  # append "<job id> start|end <time>" lines to this file
    sleep: float = 0.0  # seconds between start and end
    # Side by side, shown without timing: each of two steps makes its file at its start
    # and waits (30 s at most, then fails) for the other's.
    touch: str | None = None
    wait_for: str | None = None


def run_step(payload: StepPayload, ctx: JobContext) -> dict[str, Any]:
    if payload.log:
        _note(payload.log, ctx.job_id, "start")
    if payload.touch:
        open(payload.touch, "a").close()
    if payload.wait_for:
        deadline = time.monotonic() + 30
        while not os.path.exists(payload.wait_for):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{payload.wait_for} did not appear: no step beside this one")
            time.sleep(0.01)
    if payload.sleep:
        time.sleep(payload.sleep)
    if payload.fail or (payload.fail_unless and not os.path.exists(payload.fail_unless)):
        raise RuntimeError(f"step of job {ctx.job_id} failed on purpose")
    seen = ctx.dependency_results()
    if payload.log:
        _note(payload.log, ctx.job_id, "end")
    return {"value": payload.value, "seen": seen, "pid": os.getpid()}


def _note(path: str, job_id: int, what: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{job_id} {what} {time.time():.6f}\n")


@hookimpl
def register_jobs() -> list[Job]:
    once = {"schema": StepPayload, "handler": run_step, "max_attempts": 1, "timeout": 30}
    return [
        Job(type="flows.greenlet", **once),  # type: ignore[arg-type]
        Job(type="flows.thread", executor="thread", **once),  # type: ignore[arg-type]
        Job(type="flows.process", executor="process", **once),  # type: ignore[arg-type]
    ]
