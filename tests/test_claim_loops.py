"""The worker's two claim loops, run in-process against the real database: the helper
loop claims only during a backlog, and no loop holds more jobs than the pool can start."""

from __future__ import annotations

import time

import gevent

from poel_host import JobRequest, Settings
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker


class CountingWorker(Worker):
    """Records the limit of every claim it makes (the claims themselves are real)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.claims: list[tuple[int, int]] = []  # (limit, rows claimed)
        self.most_held = 0  # jobs running, waiting for a runner, or being claimed

    def open(self):
        super().open()
        claim = self.producer.claim

        def counted(lane, limit):
            rows = claim(lane, limit)
            self.claims.append((limit, len(rows)))
            self.most_held = max(self.most_held, len(self.slots))
            return rows

        self.producer.claim = counted


def start_worker(dsn: str, concurrency: int) -> tuple[CountingWorker, gevent.Greenlet]:
    # Polling once an hour: every claim after the first is a NOTIFY's or a backlog's.
    settings = Settings(
        DATABASE_URL=dsn,
        WORKER_CONCURRENCY=concurrency,
        POEL_POLL_INTERVAL_MS=3_600_000,
        HEALTH_CHECK_PORT=0,
    )
    plugins = load_plugins(["poel-testjobs"])
    worker = CountingWorker(settings, plugins, log=get_logger())
    return worker, gevent.spawn(worker.run)


def settled(worker: CountingWorker, quiet_s: float = 0.3, timeout: float = 5.0) -> int:
    """How many claims the worker made, once none came for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    count, since = len(worker.claims), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"claims never settled: {worker.claims}"
        gevent.sleep(0.02)
        if len(worker.claims) != count:
            count, since = len(worker.claims), time.monotonic()
    return count


def stop_worker(worker: Worker, greenlet: gevent.Greenlet) -> None:
    worker.stop()
    greenlet.join(timeout=30)
    assert greenlet.dead


def test_an_idle_worker_makes_one_claim_per_wake_up(poel_dsn, poel_queue, wait_sql):
    worker, greenlet = start_worker(poel_dsn, concurrency=10)
    try:
        # The first job also sees the start-up claims through; count from the second on.
        poel_queue.enqueue("test.record", {"key": "first"})
        wait_sql("SELECT count(*) = 1 FROM poel.jobs WHERE state = 'succeeded'")
        for i in (2, 3):
            # Start-up wakes (the listener's first connection, the first passes of the
            # services) may still be claiming: count once the claims have settled.
            before = settled(worker)
            poel_queue.enqueue("test.record", {"key": str(i)})
            wait_sql(f"SELECT count(*) = {i} FROM poel.jobs WHERE state = 'succeeded'")
            gevent.sleep(0.2)  # time for a stray second claim to show (there must be none)
            assert worker.claims[before:] == [(10, 1)]
    finally:
        stop_worker(worker, greenlet)


def test_a_backlog_is_claimed_in_batches_that_never_exceed_the_pool(poel_dsn, poel_queue, wait_sql):
    poel_queue.enqueue_many([JobRequest("test.record", {"key": str(i)}) for i in range(500)])
    worker, greenlet = start_worker(poel_dsn, concurrency=60)
    try:
        wait_sql("SELECT count(*) = 500 FROM poel.jobs WHERE state = 'succeeded'", timeout=60)
    finally:
        stop_worker(worker, greenlet)
    assert sum(rows for _, rows in worker.claims) == 500
    # Half the pool a claim (30, more than the minimum of 25), both loops claiming, and
    # never more jobs held than the pool can start.
    assert max(limit for limit, _ in worker.claims) == 30
    assert worker.most_held <= 60
