"""Job types whose handlers misbehave on request, in every executor.

A payload lists what the handler does, in order (``do``): succeed, raise errors no
database column can hold (a NUL byte, a lone surrogate, megabytes of text, an exception
whose ``str()`` raises), sleep, and so on. Each attempt is recorded in
``public.poel_chaos_attempts`` on a connection of its own (autocommit, outside the job's
transaction) when it starts and when it ends, so that tests can count runs, tell which
attempt ran where, and check that no two attempts of one job overlapped.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import psycopg
from pydantic import BaseModel, Field

from poel_host import Job, JobContext, Migration, hookimpl

Act = Literal[
    "ok",
    "error_nul",
    "error_surrogate",
    "error_huge",
    "error_unprintable",
    "error_nul_str",
    "sleep",
    "exit_process",
]


class Chaos(BaseModel):
    key: str = ""
    do: list[Act] = Field(default_factory=lambda: ["ok"])
    seconds: float = Field(default=0.0, ge=0)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class NulText(Exception):
    """An exception whose message is fine but whose ``str()`` carries a NUL and a lone
    surrogate (as text decoded with ``surrogateescape`` from an ID3 tag does)."""

    def __str__(self) -> str:
        return "tag \x00 title \udcff end"


def _note(ctx: JobContext, what: str) -> None:
    settings = ctx.settings
    assert settings is not None
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.poel_chaos_attempts (job_id, job_type, attempt, pid, what)"
            " VALUES (%s, %s, %s, %s, %s)",
            [ctx.job_id, ctx.job_type, ctx.attempt, os.getpid(), what],
        )


def act(payload: Chaos, ctx: JobContext) -> None:
    _note(ctx, "start")
    for step in payload.do:
        if step == "error_nul":
            raise ValueError("bad\x00byte")
        if step == "error_surrogate":
            raise ValueError("bad \ud800 surrogate")
        if step == "error_huge":
            raise ValueError("x" * 5_000_000)
        if step == "error_unprintable":
            raise Unprintable
        if step == "error_nul_str":
            raise NulText
        if step == "sleep":
            time.sleep(payload.seconds)
        if step == "exit_process":
            os._exit(70)  # whatever process runs it: serve itself for a greenlet job
    _note(ctx, "end")


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(type="chaos.greenlet", schema=Chaos, handler=act, max_attempts=2, backoff=0.05),
        Job(
            type="chaos.thread",
            schema=Chaos,
            handler=act,
            max_attempts=2,
            backoff=0.05,
            executor="thread",
        ),
        Job(
            type="chaos.process",
            schema=Chaos,
            handler=act,
            max_attempts=2,
            backoff=0.05,
            executor="process",
        ),
        # A backoff no interval can hold: its retry must still be recorded.
        Job(
            type="chaos.far_backoff",
            schema=Chaos,
            handler=act,
            max_attempts=2,
            backoff=lambda attempt: 1e15,
        ),
    ]


@hookimpl
def register_migrations() -> list[Migration]:
    return [
        Migration(
            1,
            "chaos_attempts",
            """
            CREATE TABLE public.poel_chaos_attempts (
                id bigserial PRIMARY KEY,
                job_id bigint NOT NULL,
                job_type text NOT NULL,
                attempt integer NOT NULL,
                pid integer NOT NULL,
                what text NOT NULL,
                at timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            """,
        )
    ]
