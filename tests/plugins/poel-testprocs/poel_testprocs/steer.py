"""Job types that snooze and discard themselves, one of each per executor, for
poel-host's own tests (entry point ``poel-teststeer``).

Each run is recorded in ``public.poel_proc_runs`` (``poel-testprocs``' table) with a note
``run snoozes=N``; ``job_finished`` records ``finished <outcome> <error>`` for these job
types, so that a test reads what the hook was told, whichever process ran the handler.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from poel_host import Discard, Job, JobContext, Snooze, hookimpl
from poel_testprocs.plugin import record

EXECUTORS = ("greenlet", "thread", "process")


class Snoozing(BaseModel):
    key: str = ""
    seconds: str = "0"  # text, parsed by the handler: NaN and 10**400 are not JSON numbers
    times: int = Field(default=1, ge=0)  # snooze while ctx.snoozes is below this
    how: Literal["ctx", "raise", "subclass", "local", "no_seconds", "lose_first"] = "ctx"


class Discarding(BaseModel):
    key: str = ""
    reason: str = "not wanted"
    repeat: int = Field(default=1, ge=1)  # the reason this many times (a 100 kB message)
    subclass: bool = False
    nul: bool = False  # a NUL byte after the first character (no payload can carry one)


class PluginSnooze(Snooze):
    """A plugin's own subclass (importable)."""


class PluginDiscard(Discard):
    """A plugin's own subclass (importable)."""


class NoSeconds(Snooze):
    """A subclass that forgets to call Snooze.__init__: it carries no seconds."""

    def __init__(self) -> None:
        Exception.__init__(self, "no seconds")


def _seconds(text: str) -> float:
    if text.lstrip("-").isdigit():
        return int(text)  # type: ignore[return-value]  # an int, maybe past a float's range
    if text.startswith("10**"):
        return 10 ** int(text[4:])  # type: ignore[return-value]
    return float(text)


def snoozing(payload: Snoozing, ctx: JobContext) -> None:
    record(ctx, payload.key, f"run snoozes={ctx.snoozes}")
    if ctx.snoozes >= payload.times:
        return
    seconds = _seconds(payload.seconds)
    if payload.how == "lose_first":
        # The attempt is lost while the handler runs (rescued and claimed again elsewhere,
        # as it were): a new token, a new attempt. Its snooze must not touch that one.
        with ctx.connection() as conn:
            conn.execute(
                "UPDATE poel.jobs SET lease_token = gen_random_uuid(), attempts = attempts + 1"
                " WHERE id = %s",
                [ctx.job_id],
            )
        ctx.snooze(seconds)
    if payload.how == "ctx":
        ctx.snooze(seconds)
    if payload.how == "raise":
        raise Snooze(seconds)
    if payload.how == "subclass":
        raise PluginSnooze(seconds)
    if payload.how == "no_seconds":
        raise NoSeconds()

    class Unimportable(Snooze):  # a class no other process can import
        pass

    raise Unimportable(seconds)


def discarding(payload: Discarding, ctx: JobContext) -> None:
    record(ctx, payload.key, "run")
    reason = payload.reason * payload.repeat
    if payload.nul:
        reason = reason[:1] + "\x00" + reason[1:]
    raise (PluginDiscard if payload.subclass else Discard)(reason)


class Waiting(BaseModel):
    key: str = ""
    seconds: float = Field(default=60.0, ge=0)


def waiting(payload: Waiting, ctx: JobContext) -> None:
    """Runs ``seconds`` unless cancelled, as its executor allows: a greenlet in a query
    (cancelled on the server), a thread waiting on ``ctx`` (then raising), a process
    computing with a helper program in its group (note ``start helper=PID``)."""
    import subprocess

    from poel_testprocs.plugin import burn

    note = "start"
    if ctx.job_type.endswith("process"):
        helper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        note = f"start helper={helper.pid}"
    record(ctx, payload.key, note)
    if ctx.job_type.endswith("greenlet"):
        with ctx.connection() as conn:
            conn.execute("SELECT pg_sleep(%s) /* steer.wait */", [payload.seconds])
    elif ctx.job_type.endswith("thread"):
        ctx.wait_cancelled(payload.seconds)
        ctx.check_cancelled()
    else:
        burn(payload.seconds)  # never looks at ctx: the child is stopped from outside
    record(ctx, payload.key, "end")


@hookimpl
def register_jobs() -> list[Job]:
    jobs = []
    for executor in EXECUTORS:
        common: dict[str, Any] = {"executor": executor, "max_attempts": 3}
        jobs += [
            Job(f"steer.snooze.{executor}", Snoozing, snoozing, **common),
            Job(f"steer.snooze3.{executor}", Snoozing, snoozing, max_snoozes=3, **common),
            Job(f"steer.discard.{executor}", Discarding, discarding, **common),
            Job(f"steer.wait.{executor}", Waiting, waiting, executor=executor, timeout=120),
        ]
    jobs.append(Job("steer.snooze_unbounded", Snoozing, snoozing, max_snoozes=None))
    return jobs


@hookimpl
def job_finished(ctx: Any, outcome: str, error: str | None) -> None:
    if not ctx.job_type.startswith("steer."):
        return
    with ctx.connection() as conn:
        conn.execute(
            "INSERT INTO public.poel_proc_runs (job_id, job_type, key, attempt, pid, warm, note)"
            " VALUES (%s, %s, 'hook', %s, 0, 0, %s)",
            [ctx.job_id, ctx.job_type, ctx.attempt, f"finished {outcome} {(error or '')[:200]}"],
        )
