"""Chaos: a fan-in of 1,000 steps (a, then 1,000 parts side by side, then d) drained by
three ``poel-host serve`` processes, the busiest of which is SIGKILLed and replaced four
times while the parts run, the last time near the end, so that d waits for the rescue of
the parts it held (issue 20: "fan-in of 1,000 steps completes with d running exactly once, while
workers are killed and restarted during the run").

The steps are ``test.sleep`` jobs: each run records its start and its end in
``poel_test_runs`` (with its pid, its attempt and the server's clock), so that what ran,
how often and when is read from the handlers' own record, not only from the jobs table.
A kill is driven by what is done (so many parts succeeded), never by a sleep.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from poel_host import Workflow

pytestmark = pytest.mark.chaos

PARTS = 1000
SERVES = 3
LEASE_MS = 2000
CONCURRENCY = 10
PART_S = 0.2  # each part's run: long enough for a kill to land mid-handler
# When (parts succeeded) a worker is killed and replaced; the last lands among the last
# parts, so that d waits for their rescue.
KILL_AT = (200, 450, 700, 900)
# A part may be held by two killed workers in a row; with the default of 3 attempts a
# rare one would fail for good under this chaos.
ATTEMPTS = 10


def parts_succeeded(conn: Any, workflow_id: int) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM poel.jobs"
        " WHERE workflow_id = %s AND step LIKE 'part[%%' AND state = 'succeeded'",
        [workflow_id],
    ).fetchone()["n"]


def mid_handler(conn: Any, pid: int) -> list[int]:
    """Steps this process holds whose handler started in this attempt."""
    rows = conn.execute(
        "SELECT j.id FROM poel.jobs AS j"
        " WHERE j.state = 'running' AND split_part(j.lease_owner, ':', 2) = %s"
        "   AND EXISTS (SELECT FROM poel_test_runs AS r WHERE r.job_id = j.id"
        "               AND r.attempt = j.attempts AND r.pid = %s AND r.note = 'start')",
        [str(pid), pid],
    )
    return [r["id"] for r in rows]


def busiest(conn: Any, workers: list[Any]) -> Any:
    """The worker running the most step handlers now (None while none runs one)."""
    running = {w.pid: len(mid_handler(conn, w.pid)) for w in workers}
    best = max(workers, key=lambda w: running[w.pid])
    return best if running[best.pid] else None


def held_by(conn: Any, pid: int) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM poel.jobs WHERE state = 'running' AND split_part(lease_owner, ':', 2) = %s",
        [str(pid)],
    )
    return [r["id"] for r in rows]


def test_a_fan_in_of_1000_steps_runs_its_last_step_once_while_workers_are_killed(
    serve, poel_queue, poel_conn, wait_for, kill_mid_job, figures
):
    env = {"POEL_LEASE_MS": LEASE_MS, "WORKER_CONCURRENCY": CONCURRENCY}
    workers = [serve(**env) for _ in range(SERVES)]
    started = time.monotonic()

    flow = Workflow("chaos fan-in")
    a = flow.step("a", "test.sleep", {"key": "a", "seconds": 0.05}, max_attempts=ATTEMPTS)
    parts = flow.fan_out(
        "part",
        "test.sleep",
        [{"key": f"part{i}", "seconds": PART_S} for i in range(PARTS)],
        after=a,
        max_attempts=ATTEMPTS,
    )
    flow.step("d", "test.sleep", {"key": "d", "seconds": 0.05}, after=parts)
    workflow_id = poel_queue.enqueue_workflow(flow)

    killed: list[int] = []
    held_at_kill: set[int] = set()  # steps a killed worker held
    cut_short: set[int] = set()  # of those, the steps whose handler had started
    for at in KILL_AT:
        wait_for(
            lambda at=at: parts_succeeded(poel_conn, workflow_id) >= at,
            timeout=60,
            what=f"{at} parts succeeded",
        )
        # The worker running the most handlers right now: the kill cuts them short.
        victim = wait_for(lambda: busiest(poel_conn, workers), timeout=10, what="a step mid-run")
        kill_mid_job(victim, lambda v=victim: mid_handler(poel_conn, v.pid))
        cut_short.update(mid_handler(poel_conn, victim.pid))
        held_at_kill.update(held_by(poel_conn, victim.pid))
        killed.append(victim.pid)
        # Its replacement starts while the others work on (waited for at the end).
        workers[workers.index(victim)] = serve(wait=False, **env)
    assert parts_succeeded(poel_conn, workflow_id) < PARTS, "the last kill came too late"

    state = wait_for(
        lambda: (
            (s := poel_queue.workflow(workflow_id)) is not None and s.finished_at is not None and s
        ),
        timeout=60,
        what="the workflow finished",
    )
    drained_s = time.monotonic() - started

    # The workflow, every step, and nothing left behind.
    assert (state.state, state.failed_step) == ("succeeded", None), state.failed_error
    assert len(state.steps) == PARTS + 2
    assert {s.state for s in state.steps} == {"succeeded"}
    ids = {s.name: s.job_id for s in state.steps}
    part_ids = {ids[p.name] for p in parts}
    row = poel_conn.execute(
        "SELECT steps, steps_left, finished_at FROM poel.workflows WHERE id = %s", [workflow_id]
    ).fetchone()
    assert (row["steps"], row["steps_left"]) == (PARTS + 2, 0)
    assert poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE state IN ('queued', 'running')"
        "  OR lease_owner IS NOT NULL OR waiting_on > 0"
    ).fetchone() == {"n": 0}

    # The handlers' own record: d ran exactly once, after every part's last end.
    runs: dict[int, dict[str, list[Any]]] = {}
    for r in poel_conn.execute(
        "SELECT job_id, note, pid, at FROM poel_test_runs WHERE note IN ('start', 'end')"
        " ORDER BY id"
    ):
        runs.setdefault(r["job_id"], {"start": [], "end": []})[r["note"]].append(r)
    assert set(runs) == set(ids.values()), "a step succeeded without running, or a stray run"
    d_runs = runs[ids["d"]]
    assert (len(d_runs["start"]), len(d_runs["end"])) == (1, 1), d_runs
    parts_ended = max(r["at"] for i in part_ids for r in runs[i]["end"])
    assert all(runs[i]["end"] for i in part_ids), "a part succeeded without its handler ending"
    assert d_runs["start"][0]["at"] > parts_ended
    assert d_runs["start"][0]["at"] > max(r["at"] for r in runs[ids["a"]]["end"])
    d_row = poel_conn.execute(
        "SELECT attempts, finished_at FROM poel.jobs WHERE id = %s", [ids["d"]]
    ).fetchone()
    assert d_row["attempts"] == 1
    # The workflow ended with d, not before it (a step's end counted twice would have
    # ended it early).
    assert row["finished_at"] >= d_row["finished_at"]

    # A step ran more than once only where a killed worker held it, every run but the
    # last cut short by a kill (or its outcome lost with it).
    again = {i: r["start"] for i, r in runs.items() if len(r["start"]) > 1}
    assert set(again) <= held_at_kill, (again, held_at_kill)
    for starts in again.values():
        assert {r["pid"] for r in starts[:-1]} <= set(killed), (starts, killed)
    lost = poel_conn.execute(
        "SELECT id, attempts, errors FROM poel.jobs WHERE workflow_id = %s AND attempts > 1",
        [workflow_id],
    ).fetchall()
    assert {r["id"] for r in lost} <= held_at_kill
    for r in lost:
        assert [e["error"].split(":")[0] for e in r["errors"]] == ["worker lost"] * (
            r["attempts"] - 1
        ), r

    for worker in workers:
        worker.wait_log("worker started", timeout=30)
        assert worker.stop() == 0
    figures.update(
        parts=PARTS,
        serves=SERVES,
        kills=len(killed),
        steps_held_by_killed_workers=len(held_at_kill),
        steps_mid_handler_at_kill=len(cut_short),
        steps_run_again=len(again),
        d_start_after_last_part_end_s=round(
            (d_runs["start"][0]["at"] - parts_ended).total_seconds(), 3
        ),
        drain_s=round(drained_s, 3),
    )
