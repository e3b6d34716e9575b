"""Test job types. Each run is recorded in ``public.poel_test_runs`` so that tests can
count executions exactly (a job run twice shows up twice)."""

from __future__ import annotations

import os
import time

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
        Job(type="test.slow_query", schema=Sleep, handler=slow_query, timeout=1, max_attempts=1),
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
