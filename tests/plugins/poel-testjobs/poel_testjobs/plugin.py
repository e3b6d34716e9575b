"""Test job types. Each run is recorded in ``public.poel_test_runs`` so that tests can
count executions exactly (a job run twice shows up twice)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Literal

import gevent
import psycopg
from pydantic import BaseModel, Field

from poel_host import Job, JobContext, Migration, hookimpl


class Keyed(BaseModel):
    key: str = ""


class Flaky(BaseModel):
    key: str = ""
    fail_times: int = Field(ge=0)


class Sleep(BaseModel):
    key: str = ""
    seconds: float = Field(ge=0)


def record(ctx: JobContext, key: str, note: str = "") -> None:
    with ctx.connection() as conn:
        conn.execute(
            "INSERT INTO public.poel_test_runs (job_id, job_type, key, attempt, pid, note)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [ctx.job_id, ctx.job_type, key, ctx.attempt, os.getpid(), note],
        )


def noop(payload: Keyed, ctx: JobContext) -> None:
    pass


def run_record(payload: Keyed, ctx: JobContext) -> None:
    record(ctx, payload.key)


def flaky(payload: Flaky, ctx: JobContext) -> None:
    record(ctx, payload.key)
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"flaky failure {ctx.attempt}")


def always_fails(payload: Keyed, ctx: JobContext) -> None:
    record(ctx, payload.key)
    raise ValueError("this job always fails")


def sleep(payload: Sleep, ctx: JobContext) -> None:
    """Sleeps cooperatively, recording its start and its end."""
    record(ctx, payload.key, "start")
    time.sleep(payload.seconds)
    record(ctx, payload.key, "end")


def slow_query(payload: Sleep, ctx: JobContext) -> None:
    """Runs a server-side sleep longer than the job's timeout."""
    with ctx.connection() as conn:
        conn.execute("SET application_name = 'poel-test-slow-query'")
        conn.execute("SELECT pg_sleep(%s)", [payload.seconds])


def block(payload: Sleep, ctx: JobContext) -> None:
    """Burns CPU without yielding: blocks the gevent hub (misbehaving handler)."""
    end = time.perf_counter() + payload.seconds
    while time.perf_counter() < end:
        pass
    record(ctx, payload.key)


class Spin(BaseModel):
    key: str = ""
    seconds: float = Field(ge=0)
    attempts: int = Field(default=1_000, ge=0)  # the attempts that spin; later ones do not


def spin(payload: Spin, ctx: JobContext) -> None:
    """Records its start, burns pure-Python CPU for ``seconds`` without yielding (the gevent
    hub is blocked all along: no other greenlet runs), then records its end. Attempts past
    ``attempts`` skip the spin."""
    record(ctx, payload.key, "start")
    if ctx.attempt <= payload.attempts:
        end = time.perf_counter() + payload.seconds
        while time.perf_counter() < end:
            pass
    record(ctx, payload.key, "end")


def work(payload: Sleep, ctx: JobContext) -> None:
    """Records the run as it starts, then sleeps cooperatively: a kill lands mid-job."""
    record(ctx, payload.key, "start")
    time.sleep(payload.seconds)


def stall(payload: Sleep, ctx: JobContext) -> None:
    """The first attempt records, sleeps, then fails; later attempts record and succeed.

    A first attempt whose late failure got recorded would leave the job queued or failed.
    """
    record(ctx, payload.key, "start")
    if ctx.attempt == 1:
        time.sleep(payload.seconds)
        raise RuntimeError("first attempt's late failure")


class Misbehave(BaseModel):
    key: str = ""
    how: Literal[
        "base_exception",
        "sys_exit",
        "greenlet_exit",
        "keep_connection",
        "hold_connection",
        "return_value",
    ]


class HandlerEscape(BaseException):
    """Not an Exception: escapes ``except Exception`` in careless code."""


# Connections (or their context managers) that misbehaving handlers keep, so that nothing
# closes them behind the worker's back.
KEPT: list[Any] = []


def misbehave(payload: Misbehave, ctx: JobContext) -> Any:
    """Misbehaves as asked, after recording its run."""
    record(ctx, payload.key, payload.how)
    if payload.how == "base_exception":
        raise HandlerEscape("a BaseException subclass")
    if payload.how == "sys_exit":
        sys.exit(7)
    if payload.how == "greenlet_exit":
        raise gevent.GreenletExit("raised by the handler, not a shutdown")
    if payload.how == "keep_connection":
        with ctx.connection() as conn:
            pass
        KEPT.append(conn)
        # Used after its block ended: the connection is the pool's again.
        conn.execute(
            "INSERT INTO public.poel_test_runs (job_id, job_type, key, attempt, pid, note)"
            " VALUES (%s, %s, %s, %s, %s, 'after block')",
            [ctx.job_id, ctx.job_type, payload.key, ctx.attempt, os.getpid()],
        )
    if payload.how == "hold_connection":
        block = ctx.connection()
        conn = block.__enter__()  # never exited: the connection is not given back
        conn.execute("SELECT 1")
        KEPT.append(block)
    if payload.how == "return_value":
        return {"a": "value nobody asked for"}
    return None


def hold(payload: Sleep, ctx: JobContext) -> None:
    """Records its start, then runs until the test inserts a ``release`` row for its key
    (a row of ``poel_test_runs`` with ``note = 'release'``), polling every 20 ms; fails
    after ``seconds`` without one. The test decides when the job ends."""
    record(ctx, payload.key, "start")
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        with ctx.connection() as conn:
            released = conn.execute(
                "SELECT 1 FROM public.poel_test_runs WHERE key = %s AND note = 'release'",
                [payload.key],
            ).fetchone()
        if released:
            record(ctx, payload.key, "end")
            return
        time.sleep(0.02)
    raise RuntimeError(f"not released within {payload.seconds:g}s")


def cooperative(payload: Keyed, ctx: JobContext) -> None:
    """Waits for the worker's cancellation (shutdown past its grace period), then stops the
    way a well-behaved handler does: ``check_cancelled()`` raises JobCancelled."""
    record(ctx, payload.key, "start")
    ctx.wait_cancelled(60)
    ctx.check_cancelled()
    record(ctx, payload.key, "not cancelled")


class Fanout(BaseModel):
    key: str = ""
    count: int = Field(ge=0, le=1000)
    follow_up: str = "test.record"
    log: int = Field(default=0, ge=0)  # log lines to write after the follow-ups


def fanout(payload: Fanout, ctx: JobContext) -> None:
    """Enqueues ``count`` follow-up jobs (``test.record`` unless ``follow_up`` says
    otherwise) through ``ctx.enqueue`` (keys ``KEY.0``, ``KEY.1``...), then writes ``log``
    lines through ``ctx.log``."""
    for i in range(payload.count):
        ctx.enqueue(payload.follow_up, {"key": f"{payload.key}.{i}"})
    for n in range(payload.log):
        ctx.log.info("fanning out", line=n)


class Overrun(BaseModel):
    key: str = ""
    seconds: float = Field(ge=0)
    heed: bool = False  # stop early when asked to (ctx.wait_cancelled)


def overrun(payload: Overrun, ctx: JobContext) -> None:
    """Records its start, runs ``seconds`` (past its timeout, when asked to: ignoring
    cancellation unless ``heed``), then records its end and whether it was asked to stop
    (note ``end cancelled=True``)."""
    record(ctx, payload.key, "start")
    if payload.heed:
        ctx.wait_cancelled(payload.seconds)
    else:
        deadline = time.monotonic() + payload.seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    note = f"end cancelled={ctx.cancelled}"
    # Past its deadline ctx.connection()'s statements time out at once: its own connection.
    assert ctx.settings is not None
    with psycopg.connect(ctx.settings.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.poel_test_runs (job_id, job_type, key, attempt, pid, note)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [ctx.job_id, ctx.job_type, payload.key, ctx.attempt, os.getpid(), note],
        )


class Leak(BaseModel):
    key: str = ""
    seconds: float = Field(gt=0)


def leak_timer(payload: Leak, ctx: JobContext) -> None:
    """Starts a ``gevent.Timeout`` and returns without cancelling it (a careless handler):
    it fires ``seconds`` later into whatever its greenlet runs then."""
    record(ctx, payload.key)
    gevent.Timeout(payload.seconds).start()


def missing_key(payload: Keyed, ctx: JobContext) -> None:
    """Fails with a ``KeyError``: its error text alone says little without a traceback."""
    record(ctx, payload.key)
    lookup: dict[str, int] = {}
    lookup[payload.key or "x"] += 1


@hookimpl
def register_jobs() -> list[Job]:
    # A periodic job only when a test asks for one, so other tests see no scheduled jobs.
    tick = os.environ.get("POEL_TEST_TICK_SCHEDULE")
    scheduled = [Job(type="test.tick", schema=Keyed, handler=run_record, schedule=tick)]
    return (scheduled if tick else []) + [
        Job(type="test.noop", schema=Keyed, handler=noop),
        Job(type="test.record", schema=Keyed, handler=run_record),
        Job(type="test.flaky", schema=Flaky, handler=flaky, backoff=0.2),
        Job(type="test.fail", schema=Keyed, handler=always_fails, backoff=0.05),
        Job(type="test.sleep", schema=Sleep, handler=sleep),
        Job(type="test.block", schema=Sleep, handler=block),
        Job(type="test.spin", schema=Spin, handler=spin),
        Job(type="test.work", schema=Sleep, handler=work),
        Job(type="test.stall", schema=Sleep, handler=stall),
        Job(type="test.misbehave", schema=Misbehave, handler=misbehave),
        Job(type="test.slow_query", schema=Sleep, handler=slow_query, timeout=1, max_attempts=1),
        Job(type="test.hold", schema=Sleep, handler=hold, max_attempts=3),
        Job(type="test.cooperative", schema=Keyed, handler=cooperative, max_attempts=1),
        Job(type="test.fanout", schema=Fanout, handler=fanout, max_attempts=1),
        Job(type="test.leak_timer", schema=Leak, handler=leak_timer),
        Job(type="test.missing_key", schema=Keyed, handler=missing_key, max_attempts=1),
    ]


@hookimpl
def register_migrations() -> list[Migration]:
    return [
        Migration(
            1,
            "test_runs",
            """
            CREATE TABLE public.poel_test_runs (
                id bigserial PRIMARY KEY,
                job_id bigint NOT NULL,
                job_type text NOT NULL,
                key text NOT NULL,
                attempt integer NOT NULL,
                pid integer NOT NULL,
                note text NOT NULL DEFAULT '',
                at timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            """,
        )
    ]
