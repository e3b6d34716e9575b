"""Steered job types (issue 19): the plugin ``poel-teststeering``, an entry point of its
own so that only the steering tests' workers run the steered claim. Each handler appends
"start" and "end" lines (wall-clock time, job id, key, worker pid) to the file its payload names, so
that a test checks the limits from what the handlers saw, not only from the database."""

from __future__ import annotations

import json
import os
import time

from pydantic import BaseModel

from poel_host import Job, JobContext, hookimpl


class Logged(BaseModel):
    log: str  # the file the handler appends its start and end lines to
    record: str = ""  # the key of the per-key type
    hold: float = 0.05  # seconds between start and end


def logged(payload: Logged, ctx: JobContext) -> None:
    _line(payload.log, "start", ctx.job_id, payload.record)
    time.sleep(payload.hold)
    _line(payload.log, "end", ctx.job_id, payload.record)


def _line(path: str, what: str, job_id: int, key: str) -> None:
    # One write of one line with O_APPEND: lines of concurrent writers never interleave.
    event = {"at": time.time(), "what": what, "id": job_id, "key": key, "pid": os.getpid()}
    line = json.dumps(event) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@hookimpl
def register_jobs() -> list[Job]:
    common = {"schema": Logged, "handler": logged}
    return [
        Job(type="steer.limited", concurrency=2, **common),  # type: ignore[arg-type]
        Job(type="steer.heavy", concurrency=8, weight=3, **common),  # type: ignore[arg-type]
        Job(  # type: ignore[arg-type]
            type="steer.per_record", concurrency=1, per_key=True, key="record", **common
        ),
        Job(type="steer.rated", rate=3, per=1.0, **common),  # type: ignore[arg-type]
        Job(type="steer.fair", fair=True, key="record", **common),  # type: ignore[arg-type]
    ]
