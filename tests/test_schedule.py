"""Periodic jobs: each cron slot is enqueued exactly once, however many workers run."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest

from poel_host.schedules import latest_slot, next_slot

pytestmark = pytest.mark.process

EVERY_SECOND = "* * * * * *"  # croniter's sixth field is seconds


def test_three_workers_enqueue_each_slot_once(serve, poel_conn, wait_sql):
    workers = [serve(POEL_TEST_TICK_SCHEDULE=EVERY_SECOND) for _ in range(3)]
    # Let at least five slots pass with all three processes scheduling.
    wait_sql("SELECT count(*) >= 6 FROM poel.schedule_slots", timeout=20)
    for worker in workers:
        assert worker.stop() == 0

    jobs = poel_conn.execute(
        "SELECT run_at, count(*) AS n FROM poel.jobs WHERE job_type = 'test.tick'"
        " GROUP BY run_at ORDER BY run_at"
    ).fetchall()
    slots = [row["run_at"] for row in jobs]
    assert all(row["n"] == 1 for row in jobs), jobs  # no slot enqueued twice
    # Consecutive seconds, none skipped while the workers ran.
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert steps == {1.0}, slots
    recorded = poel_conn.execute(
        "SELECT count(*) AS n, count(DISTINCT slot) AS d FROM poel.schedule_slots"
    ).fetchone()
    assert recorded["n"] == recorded["d"] == len(slots)
    # Every process took part (each one's log shows slots it enqueued or found taken).
    enqueued_by = [len([e for e in w.logs if e["msg"] == "periodic job enqueued"]) for w in workers]
    assert sum(enqueued_by) == len(slots)
    done = poel_conn.execute(
        "SELECT count(*) AS n FROM poel.jobs WHERE job_type = 'test.tick' AND state = 'succeeded'"
    ).fetchone()
    assert done["n"] >= len(slots) - 1  # the last slot may have been enqueued at shutdown


def test_a_worker_that_was_down_enqueues_only_the_latest_missed_slot(serve, poel_conn, wait_sql):
    # A slot from an hour ago is recorded as the last one enqueued: the worker was down.
    poel_conn.execute(
        "INSERT INTO poel.schedule_slots (job_type, slot)"
        " VALUES ('test.tick', now() - interval '1 hour')"
    )
    worker = serve(POEL_TEST_TICK_SCHEDULE="*/10 * * * *")  # every ten minutes
    wait_sql("SELECT count(*) = 1 FROM poel.jobs WHERE job_type = 'test.tick'")
    assert worker.stop() == 0
    row = poel_conn.execute("SELECT run_at FROM poel.jobs WHERE job_type = 'test.tick'").fetchone()
    now = dt.datetime.now(dt.timezone.utc)
    assert row["run_at"] == latest_slot("*/10 * * * *", now)  # not the five slots missed before it


def test_plugins_lists_schedule_and_next_run(poel_cli):
    result = poel_cli("plugins", "--json", POEL_TEST_TICK_SCHEDULE="0 * * * *")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    (plugin,) = [p for p in listing["plugins"] if p["name"] == "poel-testjobs"]
    (tick,) = [j for j in plugin["jobs"] if j["type"] == "test.tick"]
    assert tick["schedule"] == "0 * * * *"
    next_run = dt.datetime.fromisoformat(tick["next_run"])
    now = dt.datetime.now(dt.timezone.utc)
    assert now < next_run <= next_slot("0 * * * *", now)


def test_invalid_schedule_is_a_clear_plugin_error():
    from pydantic import BaseModel

    from poel_host import Job

    class Empty(BaseModel):
        pass

    with pytest.raises(ValueError, match="not a valid cron expression"):
        Job(type="t", schema=Empty, handler=lambda p, c: None, schedule="every hour")

    class NeedsField(BaseModel):
        x: int

    with pytest.raises(ValueError, match="must accept"):
        Job(type="t", schema=NeedsField, handler=lambda p, c: None, schedule="0 * * * *")


def test_a_late_scheduler_enqueues_the_slots_it_passed_and_a_down_one_only_the_latest(
    poel_dsn, poel_conn
):
    """Every worker a second or two late (a loaded machine) used to leave a slot
    unenqueued: a running scheduler catches up the few slots it passed, each once."""
    from pydantic import BaseModel

    from poel_host import Job
    from poel_host.database import make_pool
    from poel_host.store import Store
    from poel_host.worker.scheduler import CATCH_UP_SLOTS, Scheduler

    class Empty(BaseModel):
        pass

    job = Job(type="test.tick", schema=Empty, handler=lambda p, c: None, schedule=EVERY_SECOND)
    pool = make_pool(poel_dsn, name="scheduler-test", min_size=1, max_size=2)
    log = type("Log", (), {"info": lambda *a, **k: None, "warning": lambda *a, **k: None})()
    try:
        first, second = (Scheduler([job], Store("poel", pool), log=log) for _ in range(2))
        t0 = dt.datetime(2026, 12, 6, 9, 0, 0, 500_000, tzinfo=dt.timezone.utc)
        assert len(first.tick(t0)) == 1  # 09:00:00
        assert len(second.tick(t0)) == 0  # taken
        # Both wake 3.2 s late: the three slots passed are enqueued once, in order.
        late = t0 + dt.timedelta(seconds=3.2)
        assert len(first.tick(late)) == 3 and len(second.tick(late)) == 0
        # Down far longer than CATCH_UP_SLOTS slots: the latest only.
        back = late + dt.timedelta(seconds=CATCH_UP_SLOTS + 5)
        assert len(first.tick(back)) == 1
    finally:
        pool.close()
    slots = [
        r["run_at"]
        for r in poel_conn.execute(
            "SELECT run_at FROM poel.jobs WHERE job_type = 'test.tick' ORDER BY run_at"
        ).fetchall()
    ]
    seconds = [int((s - t0.replace(microsecond=0)).total_seconds()) for s in slots]
    assert seconds == [0, 1, 2, 3, CATCH_UP_SLOTS + 8]
