"""Issue 16: one job lifecycle. Each test is a way a job, a worker or the database used to
decide the fate of jobs that were not its own: an error text that stopped every outcome of
its worker, a job that crash-looped the fleet, a hand-back at every deploy, a claim whose
answer was lost, a hand-back the database refused."""

from __future__ import annotations

import signal
import time

import pytest

from poel_host import Queue
from poel_host.database import connection
from poel_host.errors import DatabaseUnavailable
from poel_host.jobs import JobContext
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker, completer
from poel_host.worker.held import LOST, HeldJob

CHAOS = "poel-testchaos"


def job(conn, job_id: int) -> dict:
    return conn.execute(
        "SELECT state::text AS state, attempts, handbacks, last_error, errors, run_at,"
        " lease_token, extract(epoch FROM run_at - now())::float8 AS due_in"
        " FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


@pytest.fixture
def chaos_queue(poel_settings):
    queue = Queue(poel_settings.dsn, jobs=load_plugins([CHAOS]).jobs)
    yield queue
    queue.close()


# A poisoned outcome, under serve ------------------------------------------------------------


@pytest.mark.process
def test_one_nul_error_does_not_stop_the_outcomes_of_its_worker(
    serve, chaos_queue, poel_conn, wait_sql
):
    """The issue's reproduction: one job raising ``ValueError("bad\\x00byte")``, then 20
    plain jobs. Before, all 21 stayed ``running``, /health said ``completer: DataError``
    and shutdown took 30 s."""
    host = serve(POEL_LOAD_PLUGINS=CHAOS)
    bad = chaos_queue.enqueue("chaos.greenlet", {"do": ["error_nul"]}, max_attempts=1)
    plain = [chaos_queue.enqueue("chaos.greenlet", {"key": str(i)}) for i in range(20)]
    wait_sql(
        "SELECT count(*) = 21 FROM poel.jobs WHERE state IN ('succeeded', 'failed')", timeout=20
    )
    assert job(poel_conn, bad)["state"] == "failed"
    assert job(poel_conn, bad)["last_error"] == "ValueError: bad\\x00byte"
    states = {job(poel_conn, i)["state"] for i in plain}
    assert states == {"succeeded"}
    assert host.http("/health").status == 200
    began = time.monotonic()
    assert host.stop() == 0
    assert time.monotonic() - began < 10


@pytest.mark.process
def test_outcomes_that_cannot_be_recorded_turn_health_503_until_they_are(
    serve, poel_queue, poel_conn, poel_dsn, wait_sql, wait_for
):
    """A completer whose statement waits on a lock (or an outage) keeps outcomes in memory;
    the worker used to say it was healthy meanwhile."""
    host = serve()
    job_id = poel_queue.enqueue("test.hold", {"key": "held", "seconds": 60})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    with connection(poel_dsn, autocommit=False) as locker:
        locker.execute("SELECT 1 FROM poel.jobs WHERE id = %s FOR UPDATE", [job_id])
        poel_conn.execute(
            "INSERT INTO poel_test_runs (job_id, job_type, key, attempt, pid, note)"
            " VALUES (0, 'release', 'held', 0, 0, 'release')"
        )
        answer = wait_for(
            lambda: (a := host.http("/health")).status == 503 and a,
            timeout=30,
            what="/health to say the outcome is not recorded",
        )
        assert answer.body["reason"].startswith("completer: outcomes not recorded for ")
        locker.commit()
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id])
    wait_for(lambda: host.http("/health").status == 200, what="healthy again")


# A job that kills its worker ------------------------------------------------------------------


@pytest.mark.process
def test_a_job_that_kills_its_worker_comes_back_after_a_backoff_then_fails(
    serve, chaos_queue, poel_conn, wait_sql
):
    """Rescued jobs used to be requeued at their old ``run_at``: a job that kills its
    worker took down the next one at once, ``max_attempts`` times. Now each rescue waits a
    backoff, and the last says why the job failed."""
    env = {
        "POEL_LOAD_PLUGINS": CHAOS,
        "POEL_LEASE_MS": 1000,
        "POEL_RETRY_BACKOFF_MS": 3000,
    }
    job_id = chaos_queue.enqueue("chaos.greenlet", {"do": ["exit_process"]}, max_attempts=2)
    first = serve(**env)
    assert first.wait_exit(timeout=20) == 70  # the job killed it
    # Another worker rescues the job: queued again, due after the backoff (3 s +-25%).
    second = serve(**env)
    wait_sql("SELECT state = 'queued' FROM poel.jobs WHERE id = %s", [job_id], timeout=20)
    rescued = job(poel_conn, job_id)
    assert rescued["attempts"] == 1
    assert rescued["due_in"] > 1.5
    assert rescued["last_error"].endswith("expired (attempt 1 of 2)")
    # Due, it kills that worker too; a third rescues it into the dead letter.
    assert second.wait_exit(timeout=20) == 70
    starts = poel_conn.execute(
        "SELECT at FROM poel_chaos_attempts WHERE job_id = %s ORDER BY at", [job_id]
    ).fetchall()
    assert len(starts) == 2
    serve(**env)
    wait_sql("SELECT state = 'failed' FROM poel.jobs WHERE id = %s", [job_id], timeout=20)
    failed = job(poel_conn, job_id)
    assert failed["attempts"] == 2
    assert "on attempt 2 of 2: failed" in failed["last_error"]
    assert "crashing it" in failed["last_error"]
    assert [e["attempt"] for e in failed["errors"]] == [1, 2]


# Hand-backs -------------------------------------------------------------------------------------


@pytest.mark.process
def test_hand_backs_past_the_cap_count_as_attempts(serve, poel_queue, poel_conn, wait_sql):
    """A job longer than the time between deploys was handed back at every deploy, for
    ever; past ``POEL_MAX_HANDBACKS`` each hand-back counts, and the last fails it."""
    env = {"POEL_MAX_HANDBACKS": 1, "POEL_SHUTDOWN_TIMEOUT_MS": 200}
    job_id = poel_queue.enqueue("test.hold", {"key": "long", "seconds": 60}, max_attempts=2)
    expected = [("queued", 0, 1), ("queued", 1, 2), ("failed", 2, 3)]
    for deploy, (state, attempts, handbacks) in enumerate(expected, start=1):
        host = serve(**env)
        wait_sql(
            "SELECT count(*) = %s FROM poel_test_runs WHERE job_id = %s AND note = 'start'",
            [deploy, job_id],
        )
        host.signal(signal.SIGTERM)
        assert host.wait_exit() == 0
        row = job(poel_conn, job_id)
        assert (row["state"], row["attempts"], row["handbacks"]) == (state, attempts, handbacks)
    assert row["last_error"].startswith("interrupted by a shutdown 3 times")
    assert [e["attempt"] for e in row["errors"]] == [1, 2]


# In-process faults ------------------------------------------------------------------------------


@pytest.fixture
def worker(poel_settings):
    worker = Worker(poel_settings, load_plugins([CHAOS]), log=get_logger())
    worker.open()
    yield worker
    worker.close()


def test_a_claim_whose_answer_was_lost_costs_no_attempt(worker, chaos_queue, poel_conn):
    """The claim committed, then the connection broke before its rows arrived: the jobs
    were running under a lease nobody renewed, and their rescue counted an attempt that
    never ran."""
    ids = sorted(chaos_queue.enqueue("chaos.greenlet", {}) for _ in range(3))
    claim = worker.store.claim_jobs

    def answer_lost(**kwargs):
        claim(**kwargs)
        raise DatabaseUnavailable("database unavailable: the connection was lost")

    worker.store.claim_jobs = answer_lost
    with pytest.raises(DatabaseUnavailable):
        worker.producer.claim(worker.lanes[0], 3)
    assert {job(poel_conn, i)["state"] for i in ids} == {"running"}
    worker.store.claim_jobs = claim
    # The next claim hands them back first, then takes them again as attempt 1.
    rows = worker.producer.claim(worker.lanes[0], 3)
    assert sorted(r["id"] for r in rows) == ids
    assert {r["attempts"] for r in rows} == {1}
    assert worker.producer.unanswered == []


def test_a_hand_back_the_database_refuses_lets_the_job_go(
    worker, chaos_queue, poel_conn, monkeypatch
):
    """Five failed tries used to leave the job held, its lease renewed for the worker's
    whole life; now it leaves the held table and returns when its lease expires."""
    job_id = chaos_queue.enqueue("chaos.greenlet", {})
    [row] = worker.producer.claim(worker.lanes[0], 1)
    ctx = JobContext(
        job_id=job_id,
        job_type=row["job_type"],
        attempt=1,
        max_attempts=2,
        queue="default",
        enqueued_at=row["created_at"],
        log=get_logger(),
    )
    entry = HeldJob(row=row, ctx=ctx)
    worker.held[job_id] = entry

    def refuse(*args, **kwargs):
        raise DatabaseUnavailable("database unavailable: connection refused")

    monkeypatch.setattr(worker.store, "release_jobs", refuse)
    monkeypatch.setattr(completer, "pause", lambda failures: 0.0)
    assert worker.completer.release([entry], started=False) is False
    assert job_id not in worker.held
    assert entry.phase == LOST
    assert job(poel_conn, job_id)["state"] == "running"  # until its lease expires
