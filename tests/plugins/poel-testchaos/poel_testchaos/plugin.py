"""Job types whose handlers misbehave on request, in every executor.

A payload lists what the handler does, in order (``do``): succeed, raise errors no
database column can hold (a NUL byte, a lone surrogate, megabytes of text, an exception
whose ``str()`` raises), leak a gevent timer, block the hub, burn CPU, overrun the job's
timeout, enqueue or query from the handler, kill its own process (``os._exit``, SIGKILL,
a segfault) or leave a helper program behind. Each attempt is recorded in
``public.poel_chaos_attempts`` on a connection of its own (autocommit, outside the job's
transaction): a "start" row when the handler starts and an "end" row only when it returns
normally, both with a ``run`` id of their own, so that an attempt without "end" is one
that was cut short, and tests and the campaign (:mod:`poel_testchaos.campaign`) can check
that no two attempts of one job overlapped.

The ``*.timed`` job types are the same handler with a 1 s timeout, for ``overrun``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import uuid
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
    "sigkill_self",
    "segfault",
    "leak_timer",
    "block_hub",
    "spin",
    "overrun",
    "enqueue",
    "connection",
    "helper",
]
TIMED_TIMEOUT_S = 1.0
HELPER_PREFIX = "poel-chaos-helper-"  # argv[0] of a helper: how leftovers are found


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


def _note(ctx: JobContext, run: str, what: str) -> None:
    """Record a step of this run. The campaign terminates connections on purpose: the
    record is the test's instrument, not the job's work, so it retries (a duplicate row
    of the same run is harmless: readers take the first start and the last end)."""
    settings = ctx.settings
    assert settings is not None
    for attempt in range(20):
        try:
            with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    "INSERT INTO public.poel_chaos_attempts"
                    " (job_id, job_type, attempt, pid, what, run) VALUES (%s, %s, %s, %s, %s, %s)",
                    [ctx.job_id, ctx.job_type, ctx.attempt, os.getpid(), what, run],
                )
            return
        except psycopg.OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.1)


def _busy(seconds: float) -> int:
    """Pure-Python work that never yields (no I/O, no sleep): it holds the GIL, and on a
    greenlet the hub, for ``seconds``."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n = (n * 31 + 7) % 1_000_003
    return n


def _helper(key: str) -> None:
    """Start ``sleep 600`` named after the job and leave it running: an external decoder
    the handler forgot. Its argv[0] carries the key so that leftovers can be traced."""
    subprocess.Popen([HELPER_PREFIX + key, "600"], executable="/bin/sleep")


def act(payload: Chaos, ctx: JobContext) -> None:
    run = uuid.uuid4().hex
    _note(ctx, run, "start")
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
        if step in ("sleep", "overrun"):
            time.sleep(payload.seconds)
        if step == "exit_process":
            os._exit(70)  # whatever process runs it: serve itself for a greenlet job
        if step == "sigkill_self":
            os.kill(os.getpid(), signal.SIGKILL)
        if step == "segfault":
            ctypes.string_at(0)
        if step in ("block_hub", "spin"):
            _busy(payload.seconds)
        if step == "enqueue":
            child = {"key": f"{payload.key}/child", "do": ["ok"]}
            ctx.enqueue("chaos.greenlet", child, max_attempts=10)
        if step == "connection":
            with ctx.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")
        if step == "helper":
            _helper(payload.key)
    _note(ctx, run, "end")
    if "leak_timer" in payload.do:
        # Started last, never cancelled: it fires after the handler returned, in whatever
        # the worker runs next on this greenlet (its bookkeeping, or the next job).
        import gevent

        gevent.Timeout(0.05).start()


def _types(suffix: str = "", **options: object) -> list[Job]:
    return [
        Job(
            type=f"chaos.{executor}{suffix}",
            schema=Chaos,
            handler=act,
            max_attempts=2,
            backoff=0.05,
            executor=executor,
            **options,  # type: ignore[arg-type]
        )
        for executor in ("greenlet", "thread", "process")
    ]


@hookimpl
def register_jobs() -> list[Job]:
    return [
        *_types(),
        *_types(".timed", timeout=TIMED_TIMEOUT_S),
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
        ),
        Migration(
            2,
            "chaos_attempt_runs",
            # One id per run of the handler, shared by its start and end rows: attempts
            # that do not count (a hand-back) run again under the same attempt number.
            "ALTER TABLE public.poel_chaos_attempts ADD COLUMN run text;"
            " CREATE INDEX ON public.poel_chaos_attempts (job_id);",
        ),
    ]
