"""Steering against four real ``poel-host serve`` processes racing for jobs (issue 19).

Each limit is checked from the log the handlers write (wall-clock start and end of each
job) and from the database. The workers poll only every minute: what wakes them when a
running steered job ends is the NOTIFY of its end, and when a rate window opens, the
time the steered claim said it would, so a test that finishes in seconds also shows that
nothing waits for a poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poel_host.queue import JobRequest, Queue

from .conftest import wait_until

pytestmark = pytest.mark.process

WORKERS = 4
PLUGINS = "poel-teststeering"
QUIET = {"POEL_LOAD_PLUGINS": PLUGINS, "POEL_POLL_INTERVAL_MS": 60_000, "WORKER_CONCURRENCY": 10}


def _events(log: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(line) for line in log.read_text().splitlines()), key=lambda e: e["at"]
    )


def _most_at_once(events: list[dict[str, Any]], key: str | None = None) -> int:
    running = most = 0
    for event in events:
        if key is not None and event["key"] != key:
            continue
        running += 1 if event["what"] == "start" else -1
        most = max(most, running)
    return most


def _run(serve: Any, queue: Queue, conn: Any, requests: list[JobRequest], timeout: float) -> None:
    for _ in range(WORKERS):
        serve(**QUIET)
    queue.enqueue_many(requests)
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) AS n FROM poel.jobs WHERE state = 'succeeded'"
            ).fetchone()["n"]
            == len(requests)
        ),
        timeout=timeout,
        what="every job to succeed",
    )


def _db_most_at_once(conn: Any, where: str = "true") -> int:
    """The most jobs running at once by the database's start and finish times."""
    return conn.execute(
        f"""SELECT max(n) AS n FROM (
                SELECT (SELECT count(*) FROM poel.jobs AS o
                        WHERE {where} AND o.started_at <= j.started_at
                          AND o.finished_at > j.started_at) AS n
                FROM poel.jobs AS j WHERE {where.replace("o.", "j.")}) AS c"""
    ).fetchone()["n"]


@pytest.mark.parametrize(("job_type", "most"), [("steer.limited", 2), ("steer.heavy", 2)])
def test_a_limit_is_never_exceeded_by_four_racing_workers(
    serve: Any, poel_queue: Queue, poel_conn: Any, tmp_path: Path, job_type: str, most: int
) -> None:
    # steer.limited: concurrency 2. steer.heavy: concurrency 8, each job weighing 3.
    log = tmp_path / "log"
    jobs = [JobRequest(job_type, {"log": str(log), "hold": 0.05}) for _ in range(40)]
    _run(serve, poel_queue, poel_conn, jobs, timeout=60)
    events = _events(log)
    assert len(events) == 80
    assert _most_at_once(events) == most  # never more, and the limit is used
    assert _db_most_at_once(poel_conn, f"o.job_type = '{job_type}'") == most
    workers = {e["pid"] for e in events}
    assert len(workers) >= 2, "the jobs should have been spread over the racing workers"


def test_a_per_key_limit_holds_for_each_key(
    serve: Any, poel_queue: Queue, poel_conn: Any, tmp_path: Path
) -> None:
    # steer.per_record: concurrency 1 for each payload "record".
    log = tmp_path / "log"
    records = ["a", "b", "c", "d"]
    jobs = [
        JobRequest("steer.per_record", {"log": str(log), "record": r, "hold": 0.05})
        for _ in range(10)
        for r in records
    ]
    _run(serve, poel_queue, poel_conn, jobs, timeout=60)
    events = _events(log)
    assert len(events) == 80
    for record in records:
        assert _most_at_once(events, record) == 1, f"record {record} ran two jobs at once"
    assert _most_at_once(events) >= 2, "different keys should have run side by side"
    keys = poel_conn.execute("SELECT DISTINCT key FROM poel.jobs").fetchall()
    assert sorted(k["key"] for k in keys) == records  # the key came from the payload


def test_a_rate_of_three_a_second_never_lets_a_fourth_start_in_any_second(
    serve: Any, poel_queue: Queue, poel_conn: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    jobs = [JobRequest("steer.rated", {"log": str(log), "hold": 0.01}) for _ in range(12)]
    _run(serve, poel_queue, poel_conn, jobs, timeout=30)
    starts = [e["at"] for e in _events(log) if e["what"] == "start"]
    assert len(starts) == 12
    # As recorded by the database (the window's own clock): never 4 within a second.
    db = [
        r["t"]
        for r in poel_conn.execute(
            "SELECT extract(epoch FROM started_at)::float8 AS t FROM poel.jobs ORDER BY 1"
        ).fetchall()
    ]
    assert min(db[i + 3] - db[i] for i in range(len(db) - 3)) >= 1.0
    # As the handlers saw it: a start reaches its handler a few milliseconds after the
    # database recorded it, by an amount that varies (commit, hand-over to a greenlet),
    # so their clock may see the window a little short; 50 ms is far above that skew.
    spans = [starts[i + 3] - starts[i] for i in range(len(starts) - 3)]
    assert min(spans) >= 0.95, spans
    # No poll drove it (the workers poll once a minute): each window was used as it opened.
    assert starts[-1] - starts[0] < 4.5, starts[-1] - starts[0]


def test_fair_shares_start_a_small_key_at_once_behind_a_big_backlog(
    serve: Any, poel_queue: Queue, poel_conn: Any, tmp_path: Path
) -> None:
    # steer.fair: fair shares by the payload's "record". 1,000 jobs of one record are
    # queued just before 10 of another; the worker is already idle, waiting.
    log = tmp_path / "log"
    serve(**QUIET)
    poel_queue.enqueue_many(
        [
            JobRequest("steer.fair", {"log": str(log), "record": "big", "hold": 0})
            for _ in range(1000)
        ]
        + [
            JobRequest("steer.fair", {"log": str(log), "record": "small", "hold": 0})
            for _ in range(10)
        ]
    )
    wait_until(
        lambda: (
            poel_conn.execute(
                "SELECT count(*) AS n FROM poel.jobs WHERE state = 'succeeded'"
            ).fetchone()["n"]
            == 1010
        ),
        timeout=60,
        what="every job to succeed",
    )
    starts = [e["key"] for e in _events(log) if e["what"] == "start"]
    # Without fair shares the small record's jobs would start last, behind all 1,000.
    last_small = max(i for i, key in enumerate(starts) if key == "small")
    assert last_small < 40, f"the small record's last job started {last_small + 1}th"
