"""Thread jobs under a real ``poel-host serve``: logging from threads and greenlets at once
(one JSON line each, no lock shared with the event loop), and a thread stuck past its
timeout shown in ``/metrics`` (``poel_threads_stuck``) and, past a grace of one lease
renewal interval, in ``/health`` (503 with the reason) until its handler returns."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from poel_host import JobRequest
from tests.conftest import wait_until
from tests.test_serve_metrics import samples, scrape, value

pytestmark = pytest.mark.process

PLUGINS = "poel-testjobs,poel-testthreads"  # the thread job types


def test_thread_and_greenlet_jobs_log_at_once_without_deadlock(
    serve: Any, poel_queue: Any, wait_sql: Any
) -> None:
    worker = serve(POEL_THREADS=4, POEL_LOAD_PLUGINS=PLUGINS)
    lines = {"count": 0, "log": 2000}
    poel_queue.enqueue_many(
        [JobRequest("test.thread_fanout", {"key": f"t{i}", **lines}) for i in range(4)]
        + [JobRequest("test.fanout", {"key": f"g{i}", **lines}) for i in range(4)]
    )
    wait_sql("SELECT count(*) = 8 FROM poel.jobs WHERE state = 'succeeded'", timeout=60)
    logged = [line for line in worker.logs if line.get("msg") == "fanning out"]
    assert len(logged) == 8 * 2000
    assert all(json.dumps(line) for line in logged)


def test_a_stuck_thread_shows_in_metrics_and_health_until_it_returns(
    serve: Any, poel_queue: Any, wait_sql: Any
) -> None:
    # Lease 3 s: a renewal interval (the grace) of 1 s.
    worker = serve(POEL_THREADS=1, POEL_LEASE_MS=3000, POEL_LOAD_PLUGINS=PLUGINS)
    poel_queue.enqueue("test.thread_overrun", {"key": "s", "seconds": 4}, max_attempts=1)
    wait_sql("SELECT count(*) = 1 FROM poel_test_runs WHERE key = 's'")
    started = time.monotonic()

    def stuck() -> float:
        return value(samples(scrape(worker)[1]), "poel_threads_stuck")

    wait_until(lambda: stuck() == 1, timeout=3, what="poel_threads_stuck 1")
    answer = wait_until(
        lambda: (a := worker.http("/health")).status == 503 and a, timeout=5, what="a 503"
    )
    assert time.monotonic() - started >= 1.5 - 0.2  # timeout 0.5 s + grace 1 s
    body = answer.body
    assert body["status"] == "unhealthy"
    assert "thread" in body["reason"] and "past its timeout" in body["reason"]
    wait_sql(
        "SELECT count(*) = 2 FROM poel_test_runs WHERE key = 's'", timeout=10
    )  # its handler returned
    wait_until(lambda: worker.http("/health").status == 200, timeout=5, what="healthy again")
    assert stuck() == 0
