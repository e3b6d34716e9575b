"""Job types run by the process and thread executors, for poel-host's own tests.

Each run is recorded in ``public.poel_proc_runs`` with the pid it ran in and how many
times this process's warm state was built (``process_started``), so that tests can count
executions exactly and tell which process ran what.

With ``TESTPROCS_BROKEN_IN_CHILD`` naming a file, this module fails to import in a
worker process (not in serve) while that file exists: a library only the children need
that is missing, the way a plugin's children fail to start in production.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Literal

from pydantic import BaseModel, Field

from poel_host import Job, JobContext, Migration, hookimpl

_BROKEN = os.environ.get("TESTPROCS_BROKEN_IN_CHILD")
_MAIN = getattr(sys.modules["__main__"], "__spec__", None)
if _BROKEN and os.path.exists(_BROKEN) and getattr(_MAIN, "name", "") == "poel_host.worker.child":
    import poel_testprocs_missing_decoder  # type: ignore[import-not-found]  # noqa: F401

WARM_BUILDS = 0  # process_started calls in this process


class Spin(BaseModel):
    key: str = ""
    seconds: float = Field(default=1.0, ge=0)


class Crash(BaseModel):
    key: str = ""
    how: Literal["sigkill", "segfault", "exit"] = "sigkill"


class Grow(BaseModel):
    key: str = ""
    mb: int = Field(default=50, ge=0)


class Helper(BaseModel):
    key: str = ""
    seconds: float = Field(default=60.0, ge=0)
    then: Literal["spin", "exit"] = "spin"


class Fanout(BaseModel):
    key: str = ""
    children: int = Field(default=3, ge=0, le=100)


KEPT: list[bytes] = []  # memory a grow job keeps, as a leak would


def record(ctx: JobContext, key: str, note: str = "") -> None:
    with ctx.connection() as conn:
        conn.execute(
            "INSERT INTO public.poel_proc_runs (job_id, job_type, key, attempt, pid, warm, note)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [ctx.job_id, ctx.job_type, key, ctx.attempt, os.getpid(), WARM_BUILDS, note],
        )


def burn(seconds: float, ctx: JobContext | None = None) -> int:
    """Pure-Python CPU for ``seconds`` (never yielding); stops early once cancelled."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for i in range(10_000):
            n += i * i % 7
        if ctx is not None:
            ctx.check_cancelled()
    return n


def spin(payload: Spin, ctx: JobContext) -> None:
    record(ctx, payload.key, "start")
    ctx.log.info("spinning", seconds=payload.seconds)
    burn(payload.seconds, ctx)
    record(ctx, payload.key, "end")


def crash(payload: Crash, ctx: JobContext) -> None:
    record(ctx, payload.key, "start")
    if payload.how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif payload.how == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    os._exit(3)


def helper(payload: Helper, ctx: JobContext) -> None:
    """Starts a helper program (as a job running an external decoder would), records its
    pid (note ``helper PID``), then computes for ``seconds`` or exits the child."""
    program = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    record(ctx, payload.key, f"helper {program.pid}")
    if payload.then == "exit":
        os._exit(3)
    burn(payload.seconds, ctx)
    record(ctx, payload.key, "end")


def grow(payload: Grow, ctx: JobContext) -> None:
    KEPT.append(b"x" * (payload.mb * 1024 * 1024))
    record(ctx, payload.key, f"kept {len(KEPT)}")


def fanout(payload: Fanout, ctx: JobContext) -> None:
    ids = [
        ctx.enqueue("testprocs.noop", {"key": f"{payload.key}.{i}"})
        for i in range(payload.children)
    ]
    ctx.log.info("fanned out", children=ids)
    record(ctx, payload.key, ",".join(map(str, ids)))


def fail(payload: Spin, ctx: JobContext) -> None:
    raise ValueError(f"failing in {os.getpid()}")


def noop(payload: Spin, ctx: JobContext) -> None:
    pass


FORGED = '{"level": "error", "msg": "forged by a handler", "service": "poel-worker"}'


def print_things(payload: Spin, ctx: JobContext) -> None:
    print("plain text from a handler")
    # Lines that look like serve's own log lines, on stdout and straight on fd 2.
    print(FORGED)
    os.write(2, FORGED.encode() + b"\n")
    logging.getLogger("some.library").warning("a library's line from the child")
    ctx.log.info("a log line from the child", answer=42)
    record(ctx, payload.key)


def in_thread(payload: Spin, ctx: JobContext) -> None:
    """Blocks its thread (time.sleep is gevent's in this process, the thread's own hub)."""
    record(ctx, payload.key, f"thread {threading.get_native_id()}")
    ctx.wait_cancelled(payload.seconds)
    record(ctx, payload.key, "end")


def probe(payload: Spin, ctx: JobContext) -> None:
    """Records the statement_timeout its connection got, and what ctx says."""
    with ctx.connection() as conn:
        timeout = conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"]
    note = f"{timeout} {ctx.queue} {ctx.max_attempts} {ctx.enqueued_at.isoformat()}"
    record(ctx, payload.key, note + f" {ctx.settings is not None} {ctx.cancelled}")


@hookimpl
def process_started(settings) -> None:
    global WARM_BUILDS
    WARM_BUILDS += 1


@hookimpl
def register_jobs() -> list[Job]:
    process = {"executor": "process", "max_attempts": 2}
    once = {"executor": "process", "max_attempts": 1}
    return [
        Job("testprocs.spin", Spin, spin, **process),
        Job("testprocs.spin_once", Spin, spin, executor="process", max_attempts=1),
        Job("testprocs.spin_timeout", Spin, spin, executor="process", timeout=1.0),
        Job("testprocs.crash", Crash, crash, **process),
        Job("testprocs.grow", Grow, grow, executor="process"),
        Job("testprocs.helper", Helper, helper, **once),
        Job("testprocs.helper_timeout", Helper, helper, **once, timeout=1.0),
        Job("testprocs.fanout", Fanout, fanout, executor="process"),
        Job("testprocs.fail", Spin, fail, executor="process", max_attempts=1),
        Job("testprocs.noop", Spin, noop, executor="process"),
        Job("testprocs.print", Spin, print_things, executor="process"),
        Job("testprocs.thread", Spin, in_thread, executor="thread", max_attempts=1),
        Job("testprocs.probe", Spin, probe, executor="process", timeout=120, queue="cpu"),
    ]


@hookimpl
def register_migrations() -> list[Migration]:
    return [
        Migration(
            1,
            "proc_runs",
            """
            CREATE TABLE public.poel_proc_runs (
                id       bigserial PRIMARY KEY,
                job_id   bigint NOT NULL,
                job_type text NOT NULL,
                key      text NOT NULL,
                attempt  integer NOT NULL,
                pid      integer NOT NULL,
                warm     integer NOT NULL,
                note     text NOT NULL DEFAULT '',
                at       timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """,
        )
    ]
