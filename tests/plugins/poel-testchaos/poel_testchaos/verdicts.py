"""What each campaign job does and the fate that alone explains; the invariants' checks.

The catalogue of behaviours (:data:`CATALOGUE`) is what :mod:`.campaign` draws jobs from:
each fixes its job type, its steps and its expected final state and errors, so that a
job's fate is known from its payload before it runs. :func:`overlaps` and :func:`explain`
judge one job from the database and the handlers' attempt log.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

PLAIN_ATTEMPTS = 10  # enough that faults caused by other jobs cannot dead-letter one
WORKER_LOST = "worker lost"
# What a handler that queries sees when the campaign terminates its connection.
CONNECTION_CUT = (
    "terminating connection",
    "server closed the connection",
    "consuming input failed",
    "connection is lost",
    "connection is closed",
    "the database system is shutting down",
    "connection failed",
)


@dataclass(frozen=True)
class Behaviour:
    """What one kind of job does and the fate that alone explains."""

    name: str  # executor.label
    job_type: str
    do: tuple[str, ...]
    weight: float
    state: str = "succeeded"  # the expected final state
    own: tuple[str, ...] = ()  # patterns its own errors match
    seconds: float = 0.0
    queries: bool = False  # queries in the handler: a cut connection may fail an attempt
    kills_serve: bool = False

    @property
    def executor(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def max_attempts(self) -> int:
        return PLAIN_ATTEMPTS if self.state == "succeeded" else 2


def _catalogue() -> list[Behaviour]:
    """Every behaviour with its weight (relative frequency). Plain jobs dominate; serve
    killers are rare, each costs a serve restart and a lease expiry."""
    out: list[Behaviour] = []
    errors = {
        "error_nul": "ValueError",
        "error_surrogate": "ValueError",
        "error_huge": "ValueError: xxxx",
        "error_unprintable": "Unprintable",
        "error_nul_str": "NulText",
    }
    for ex in ("greenlet", "thread", "process"):
        t = f"chaos.{ex}"
        out.append(Behaviour(f"{ex}.ok", t, ("ok",), 20))
        out += [Behaviour(f"{ex}.{e}", t, (e,), 0.6, "failed", (p,)) for e, p in errors.items()]
        out.append(Behaviour(f"{ex}.enqueue", t, ("enqueue",), 1, queries=True))
        out.append(Behaviour(f"{ex}.connection", t, ("connection",), 1, queries=True))
        # Well past the 1 s timeout: the retry (after a 0.05 s backoff) starts while a
        # thread that kept running is still asleep, so a run-twice shows as an overlap.
        overrun = 1.6 if ex == "greenlet" else 3.0
        out.append(
            Behaviour(
                f"{ex}.overrun", f"{t}.timed", ("overrun",), 0.8, "failed", ("timed out",), overrun
            )
        )
    out += [
        Behaviour("greenlet.leak_timer", "chaos.greenlet", ("leak_timer",), 1, own=("Timeout",)),
        Behaviour("greenlet.block_hub", "chaos.greenlet", ("block_hub",), 0.5, seconds=0.2),
        Behaviour("thread.spin", "chaos.thread", ("spin",), 1, seconds=0.2),
        Behaviour("process.spin", "chaos.process", ("spin",), 1, seconds=0.3),
        Behaviour("process.helper", "chaos.process", ("helper",), 0.3),
        Behaviour(
            "process.helper_overrun",
            "chaos.process.timed",
            ("helper", "overrun"),
            0.3,
            "failed",
            ("timed out",),
            3.0,
        ),
    ]
    died = ("worker process died",)
    for step in ("exit_process", "sigkill_self", "segfault"):
        out.append(Behaviour(f"process.{step}", "chaos.process", (step,), 0.2, "failed", died))
    lost = (WORKER_LOST,)
    out.append(
        Behaviour(
            "greenlet.exit_process",
            "chaos.greenlet",
            ("exit_process",),
            0.08,
            "failed",
            lost,
            kills_serve=True,
        )
    )
    out.append(
        Behaviour(
            "thread.sigkill_self",
            "chaos.thread",
            ("sigkill_self",),
            0.08,
            "failed",
            lost,
            kills_serve=True,
        )
    )
    return out


CATALOGUE = {b.name: b for b in _catalogue()}
CHILD = Behaviour("greenlet.child", "chaos.greenlet", ("ok",), 0)  # enqueued by handlers


def overlaps(runs: list[dict[str, Any]], finished_at: Any) -> str | None:
    """Why a job's runs overlap, or None.

    A run is the handler's life between its "start" row and its "end" row (both stamped
    by ``clock_timestamp()`` on the one server, so comparable). A run without "end" was
    cut short (killed, timed out, its serve died): when it really stopped is unknown, so
    it is taken to have stopped no later than the next run's start, and is caught only if
    it later writes "end" (a timed-out thread that kept running does). So: sorted by
    start, no run may start before the latest "end" of the runs that started before it,
    and no run may start after the job's fate was written (a ghost run).
    """
    latest_end = None
    for run in sorted(runs, key=lambda r: r["started"]):
        if latest_end is not None and run["started"] < latest_end:
            return f"a run started at {run['started']} before another ended at {latest_end}"
        if finished_at is not None and run["started"] > finished_at:
            return f"a run started at {run['started']} after the job finished at {finished_at}"
        if run["ended"] is not None:
            latest_end = max(latest_end or run["ended"], run["ended"])
    return None


def _matches(text: str, patterns: tuple[str, ...]) -> bool:
    return any(p.lower() in text.lower() for p in patterns)


def explain(behaviour: Behaviour | None, job: dict[str, Any]) -> dict[str, Any]:
    """Whether the job's own payload explains its final state and every error it had.

    An error is the job's own when it matches its behaviour's patterns; a collateral
    retry when a fault explains it ("worker lost": its serve was killed by another job or
    its connections cut long enough; a cut connection in a handler that queries); any
    other error, or a final state other than the expected one, is unexplained.
    """
    retries: Counter[str] = Counter()
    unexplained: list[str] = []
    if behaviour is None:
        return {"unexplained": ["a job nobody enqueued"], "collateral_retries": retries}
    if job["state"] != behaviour.state:
        unexplained.append(f"ended {job['state']}, expected {behaviour.state}")
    for entry in job["errors"] or []:
        text = str(entry.get("error", ""))
        if _matches(text, behaviour.own):
            continue
        if _matches(text, (WORKER_LOST,)):
            retries["worker lost"] += 1
        elif behaviour.queries and _matches(text, CONNECTION_CUT):
            retries["connection cut in handler"] += 1
        else:
            unexplained.append(re.sub(r"\s+", " ", text)[:200])
    return {"unexplained": unexplained, "collateral_retries": retries}
