"""Snooze and discard under a real ``poel-host serve``, one per executor: a snoozed job
waits out its seconds (the promoter makes it ready, no claim reads it before) and runs
again with its attempt not counted; a discarded job fails at once with retries left; the
``job_finished`` hook and ``/metrics`` say ``snoozed`` and ``discarded``. The process
job snoozes with a class defined in its handler, which serve cannot import."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.test_serve_metrics import samples, scrape, value

pytestmark = pytest.mark.process

PLUGINS = "poel-testprocs,poel-teststeer"


@pytest.mark.parametrize("executor", ["greenlet", "thread", "process"])
def test_serve_snoozes_and_discards_on_each_executor(
    serve: Any, poel_queue: Any, poel_conn: Any, wait_sql: Any, executor: str
) -> None:
    worker = serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=2)
    snoozing = poel_queue.enqueue(
        f"steer.snooze.{executor}", {"key": "s", "seconds": "0.4", "times": 2, "how": "local"}
    )
    discarded = poel_queue.enqueue(f"steer.discard.{executor}", {"key": "d", "reason": "gone"})
    wait_sql(
        "SELECT count(*) = 2 FROM poel.jobs"
        " WHERE id = ANY(%s) AND state IN ('succeeded', 'failed')",
        [[snoozing, discarded]],
        timeout=30,
    )
    rows = {
        r["id"]: r
        for r in poel_conn.execute(
            "SELECT id, state, attempts, max_attempts, snoozes, last_error, errors"
            " FROM poel.jobs WHERE id = ANY(%s)",
            [[snoozing, discarded]],
        )
    }
    done = rows[snoozing]
    assert (done["state"], done["attempts"], done["snoozes"]) == ("succeeded", 1, 2)
    assert done["last_error"] is None and done["errors"] == []
    runs = poel_conn.execute(
        "SELECT at FROM poel_proc_runs WHERE job_id = %s AND key = 's' ORDER BY id", [snoozing]
    ).fetchall()
    assert len(runs) == 3  # two snoozes, then the run that returned
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(runs)]
    assert min(gaps) >= 0.4  # each run waited out its snooze

    gone = rows[discarded]
    assert (gone["state"], gone["attempts"], gone["max_attempts"]) == ("failed", 1, 3)
    assert gone["last_error"] == "discarded: gone"

    hooks = [
        (r["job_id"], r["note"].strip())
        for r in poel_conn.execute(
            "SELECT job_id, note FROM poel_proc_runs WHERE key = 'hook' ORDER BY id"
        )
    ]
    assert [n for j, n in hooks if j == snoozing] == [
        "finished snoozed",
        "finished snoozed",
        "finished succeeded",
    ]
    assert [n for j, n in hooks if j == discarded] == ["finished discarded discarded: gone"]

    found = samples(scrape(worker)[1])
    snoozed = {"job_type": f"steer.snooze.{executor}", "outcome": "snoozed"}
    assert value(found, "poel_jobs_finished_total", **snoozed) == 2
    discards = {"job_type": f"steer.discard.{executor}", "outcome": "discarded"}
    assert value(found, "poel_jobs_finished_total", **discards) == 1
    assert worker.find_log("job snoozed", jobId=snoozing) is not None
    assert worker.find_log("job discarded", jobId=discarded, error="discarded: gone")
