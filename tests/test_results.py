"""A handler's result and progress (issue 19), in-process: what the worker keeps, what it
refuses (and that a refusal fails only its own job), and Queue.result's wait.

The end-to-end tests, one per executor through a real ``poel-host serve``, are in
``test_serve_results.py``."""

from __future__ import annotations

import time

import gevent
import pytest

from poel_host import JobFailed, JobNotFound, Queue, ResultTimeout
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker
from poel_host.worker.outcomes import Outcome
from poel_host.worker.progress import ProgressBoard, ProgressWriter


@pytest.fixture
def worker(poel_settings):
    plugins = load_plugins(["poel-testresults"])
    assert plugins.failed == []
    made = Worker(poel_settings, plugins, log=get_logger())
    yield made
    made.close()


@pytest.fixture
def queue(poel_settings):
    made = Queue(poel_settings.dsn, jobs=load_plugins(["poel-testresults"]).jobs)
    yield made
    made.close()


def run_all(worker: Worker, count: int, timeout: float = 30.0) -> set[int]:
    ran: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ran) < count and time.monotonic() < deadline:
        ran.update(worker.run_once())
    return ran


def rows(conn, ids):
    found = conn.execute(
        "SELECT id, state::text, last_error, result, progress, progress_message"
        " FROM poel.jobs WHERE id = ANY(%s)",
        [list(ids)],
    ).fetchall()
    return {r["id"]: r for r in found}


# What a handler returns ------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"a": [1, "x", None]}, [1, 2.5], "text", 7, True, {}])
def test_a_return_value_is_kept_as_the_result(run_job, poel_queue, value):
    done = run_job("results.greenlet", {"returns": value})
    assert done.state == "succeeded"
    assert done.result == value
    assert poel_queue.get(done.id)["result"] == value


def test_a_handler_returning_none_has_no_result_and_no_progress(run_job, poel_conn):
    done = run_job("results.greenlet", {})
    assert done.state == "succeeded"
    assert rows(poel_conn, [done.id])[done.id] | {"id": 0} == {
        "id": 0,
        "state": "succeeded",
        "last_error": None,
        "result": None,
        "progress": None,
        "progress_message": None,
    }


UNSTORABLE = {
    "set": "not JSON-serialisable",
    "object": "not JSON-serialisable",
    "nan": "cannot be stored as JSON: Out of range float values are not JSON compliant",
    "nul": "NUL character",
    "huge": "over the 1,048,576 that POEL_MAX_RESULT_BYTES allows",
}


@pytest.mark.parametrize("make", sorted(UNSTORABLE))
def test_an_unstorable_result_fails_its_job_alone(worker, queue, poel_conn, make):
    """Adversarial: the value is refused in the handler's executor, its job fails (at once:
    a retry would only make it again) with a message that says why, and the jobs of the
    same completion batch, with results of their own, are written."""
    bad = queue.enqueue("results.retried", {"make": make})
    good = [queue.enqueue("results.greenlet", {"returns": {"n": i}}) for i in range(10)]
    assert run_all(worker, 11) == {bad, *good}
    found = rows(poel_conn, [bad, *good])
    assert found[bad]["state"] == "failed"
    assert UNSTORABLE[make] in found[bad]["last_error"]
    assert found[bad]["result"] is None
    assert [found[i]["result"] for i in good] == [{"n": i} for i in range(10)]


def test_a_result_the_database_refuses_is_recorded_and_its_batch_finishes(worker, queue, poel_conn):
    """Whatever slips past the check (here JSON text jsonb refuses, written straight to the
    completer), the completer writes the batch row by row: the others keep their results,
    the bad one is recorded as a worker error."""
    worker.open()
    ids = sorted(queue.enqueue("results.greenlet", {}) for _ in range(3))
    claimed = {r["id"]: r for r in worker.producer.claim(worker.lanes[0], 3)}
    token = {i: claimed[i]["lease_token"] for i in ids}
    worker.completer.write(
        [
            Outcome(ids[0], "succeeded", token=token[ids[0]], result='{"ok": 1}'),
            Outcome(ids[1], "succeeded", token=token[ids[1]], result='{"bad": "\\u0000"}'),
            Outcome(ids[2], "succeeded", token=token[ids[2]], progress=(1.0, "done")),
        ]
    )
    found = rows(poel_conn, ids)
    assert [found[i]["state"] for i in ids] == ["succeeded", "failed", "succeeded"]
    assert found[ids[0]]["result"] == {"ok": 1}
    assert "could not be recorded" in found[ids[1]]["last_error"]
    assert (found[ids[2]]["progress"], found[ids[2]]["progress_message"]) == (1.0, "done")


# Progress --------------------------------------------------------------------------------


def test_progress_is_written_with_the_outcome_and_seen_by_the_kit(run_job, poel_queue):
    done = run_job("results.greenlet", {"steps": [[0.25, "a quarter"], [0.5, None], [1, "done"]]})
    assert done.state == "succeeded"
    assert done.progress == [(0.25, "a quarter"), (0.5, None), (1.0, "done")]
    job = poel_queue.get(done.id)
    assert (job["progress"], job["progress_message"]) == (1.0, "done")


def test_a_nul_in_a_progress_message_is_stored_visibly(run_job, poel_queue):
    done = run_job("results.greenlet", {"make": "nul_progress"})
    assert done.state == "succeeded"
    message = poel_queue.get(done.id)["progress_message"]
    assert message.startswith("a\\x00b") and len(message) <= 1000


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), float("inf"), True, "half"])
def test_a_fraction_outside_0_1_is_the_handlers_error(poel_context, fraction):
    with pytest.raises(ValueError, match="progress fraction must be a number from 0 to 1"):
        poel_context.progress(fraction, "x")
    poel_context.progress(0.5)
    assert poel_context.progress_calls == [(0.5, None)]


def test_a_fraction_outside_0_1_fails_the_job_saying_so(run_job):
    done = run_job("results.greenlet", {"steps": [[1.5, "too far"]]}, max_attempts=1)
    assert done.state == "failed"
    assert "progress fraction must be a number from 0 to 1, got 1.5" in done.error


def test_a_flood_of_progress_is_one_row_a_pass(poel_settings, worker, queue, poel_conn):
    """10,000 reports of one job, and one of another: the writer's pass writes two rows,
    in one statement; the latest report of each."""
    worker.open()
    ids = sorted(queue.enqueue("results.greenlet", {}) for _ in range(2))
    claimed = {r["id"]: r for r in worker.producer.claim(worker.lanes[0], 2)}
    board = ProgressBoard()
    for i in range(10_000):
        board.note(ids[0], str(claimed[ids[0]]["lease_token"]), i / 10_000, f"step {i}")
    board.note(ids[1], str(claimed[ids[1]]["lease_token"]), 0.5, "half")
    statements = []
    real = worker.store.write_progress
    worker.store.write_progress = lambda rows: statements.append(rows) or real(rows)
    writer = ProgressWriter(worker.store, board, log=get_logger())
    assert writer.write() == 2
    assert writer.write() == 0  # nothing new: no statement
    assert len(statements) == 1
    found = rows(poel_conn, ids)
    assert (found[ids[0]]["progress"], found[ids[0]]["progress_message"]) == (0.9999, "step 9999")
    assert found[ids[0]]["state"] == "running"


def test_progress_of_a_lost_attempt_is_written_nowhere(worker, queue, poel_conn):
    worker.open()
    job_id = queue.enqueue("results.greenlet", {})
    claimed = worker.producer.claim(worker.lanes[0], 1)[0]
    # The attempt is lost (rescued and claimed again: a new token).
    poel_conn.execute(
        "UPDATE poel.jobs SET lease_token = gen_random_uuid() WHERE id = %s", [job_id]
    )
    board = ProgressBoard()
    board.note(job_id, str(claimed["lease_token"]), 0.5, "stale")
    assert ProgressWriter(worker.store, board, log=get_logger()).write() == 0
    assert rows(poel_conn, [job_id])[job_id]["progress"] is None


def test_a_progress_statement_that_fails_is_dropped_and_outcomes_go_on(worker, queue, poel_conn):
    worker.open()
    board = ProgressBoard()
    board.note(1, "not-a-uuid", 0.5, "x")  # the statement fails: invalid uuid
    assert ProgressWriter(worker.store, board, log=get_logger()).write() == 0
    assert len(board) == 0
    job_id = queue.enqueue("results.greenlet", {"returns": 1})
    assert run_all(worker, 1) == {job_id}
    assert rows(poel_conn, [job_id])[job_id]["result"] == 1


# Queue.result ----------------------------------------------------------------------------


def test_result_of_a_finished_job(run_job, poel_queue):
    done = run_job("results.greenlet", {"returns": {"ok": True}})
    assert poel_queue.result(done.id, timeout=5) == {"ok": True}
    none = run_job("results.greenlet", {})
    assert poel_queue.result(none.id, timeout=5) is None


def test_result_waits_for_the_outcome_without_polling(worker, queue):
    job_id = queue.enqueue("results.greenlet", {"returns": [1, 2]})
    started = time.monotonic()
    waiter = gevent.spawn(queue.result, job_id, timeout=60)
    gevent.sleep(0)  # the waiter connects and LISTENs before the job runs (either order works)
    assert run_all(worker, 1) == {job_id}
    assert waiter.get(timeout=10) == [1, 2]
    assert time.monotonic() - started < 10  # woken by the NOTIFY, not the 60s deadline


def test_outcomes_notify_only_when_someone_waits_for_one_of_their_jobs(
    worker, queue, poel_dsn, poel_conn
):
    import psycopg

    with psycopg.connect(poel_dsn, autocommit=True) as listener:
        listener.execute("LISTEN poel_outcomes")
        nobody = queue.enqueue("results.greenlet", {"returns": 1})
        assert run_all(worker, 1) == {nobody}
        # Nothing arrives for a job nobody waits on (the positive case below shows the
        # channel works: the same listener, the same statements).
        assert list(listener.notifies(timeout=1.0)) == []
        waited = queue.enqueue("results.greenlet", {"returns": 2})
        poel_conn.execute("INSERT INTO poel.result_waiters (job_id) VALUES (%s)", [waited])
        assert run_all(worker, 1) == {waited}
        told = next(listener.notifies(timeout=10), None)
        assert told is not None and told.payload == "poel"


def test_a_waiter_removes_its_row_when_it_stops_waiting(run_job, poel_queue, poel_conn):
    done = run_job("results.greenlet", {"returns": 3})
    assert poel_queue.result(done.id, timeout=5) == 3
    queued = poel_queue.enqueue("results.greenlet", {"returns": 4})
    with pytest.raises(ResultTimeout):
        poel_queue.result(queued, timeout=0.2)
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.result_waiters").fetchone()["n"] == 0


def test_result_of_a_failed_job_raises_with_its_error_history(run_job, poel_queue):
    done = run_job("results.greenlet", {"make": "set"}, max_attempts=1)
    with pytest.raises(JobFailed) as raised:
        poel_queue.result(done.id, timeout=5)
    assert raised.value.state == "failed"
    assert raised.value.job_id == done.id
    assert "not JSON-serialisable" in raised.value.errors[-1]["error"]
    assert f"job {done.id} failed" in str(raised.value)


def test_result_of_a_retried_job_is_its_last_attempts(run_job, poel_queue):
    first = run_job("results.retried", {"returns": "second time", "fail_first": True})
    assert first.state == "queued"
    waiter = gevent.spawn(poel_queue.result, first.id, timeout=60)
    gevent.sleep(0)
    run_job.retry(first.id)
    assert waiter.get(timeout=10) == "second time"


def test_result_of_an_archived_job(run_job, poel_queue, poel_conn):
    done = run_job("results.greenlet", {"returns": {"kept": 1}, "steps": [[1, "done"]]})
    store = run_job.worker.store
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=100) == 1
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0
    assert poel_queue.result(done.id, timeout=5) == {"kept": 1}
    job = poel_queue.get(done.id)
    assert (job["progress"], job["progress_message"]) == (1.0, "done")


def test_result_of_an_unknown_job(poel_queue):
    with pytest.raises(JobNotFound, match="job 999999 does not exist"):
        poel_queue.result(999_999, timeout=1)


def test_result_times_out_naming_the_job_and_its_state(poel_queue):
    job_id = poel_queue.enqueue("results.greenlet", {})
    with pytest.raises(
        ResultTimeout, match=f"job {job_id} did not finish within 0.2s: it is queued"
    ):
        poel_queue.result(job_id, timeout=0.2)
    with pytest.raises(TimeoutError):
        poel_queue.result(job_id, timeout=0)


# Where the columns are (migration 0014) --------------------------------------------------


def test_the_columns_are_in_every_table_partition_and_the_view(poel_conn):
    poel_conn.execute("SELECT poel.make_done_partitions(now(), interval '1 hour', 1)")
    tables = [
        r["relname"]
        for r in poel_conn.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'poel' AND c.relkind IN ('r', 'p', 'v')"
            " AND (c.relname LIKE 'jobs%%' OR c.relname = 'all_jobs')"
        )
    ]
    assert {"jobs", "jobs_history", "jobs_done", "jobs_dead", "all_jobs"} <= set(tables)
    assert any(t.startswith("jobs_done_2") for t in tables)  # a time partition
    for table in tables:
        columns = {
            r["attname"]: r["type"]
            for r in poel_conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [f"poel.{table}"],
            )
        }
        assert columns["result"] == "jsonb", table
        assert columns["progress"] == "double precision", table
        assert columns["progress_message"] == "text", table


def test_a_retry_from_the_history_carries_progress(run_job, poel_queue):
    done = run_job(
        "results.greenlet", {"steps": [[0.3, "got this far"]], "make": "set"}, max_attempts=1
    )
    assert done.state == "failed"
    store = run_job.worker.store
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=100) == 1
    assert poel_queue.retry(done.id)
    job = poel_queue.get(done.id)
    assert (job["state"], job["progress"], job["progress_message"]) == (
        "queued",
        0.3,
        "got this far",
    )


class _Named(dict):
    """The store's queries, recording which are used."""

    def __init__(self, queries, used):
        super().__init__(queries)
        self.used = used

    def __getitem__(self, name):
        self.used.append(name)
        return super().__getitem__(name)


def test_a_job_returning_none_costs_the_same_statement_as_before(worker, queue):
    """The job path's pride: successes without a result or progress are written by
    finish_succeeded alone (two arrays); a result goes through finish_jobs, in the same
    pass, not a statement of its own."""
    worker.open()
    used: list[str] = []
    worker.store._q = _Named(worker.store._q, used)
    plain = [queue.enqueue("results.greenlet", {}) for _ in range(5)]
    assert run_all(worker, 5) == set(plain)
    assert [n for n in used if n.startswith(("finish", "write_progress"))] == ["finish_succeeded"]
    used.clear()
    mixed = [queue.enqueue("results.greenlet", {"returns": i or None}) for i in range(4)]
    assert run_all(worker, 4) == set(mixed)
    assert sorted(n for n in used if n.startswith("finish")) == ["finish_jobs", "finish_succeeded"]


def test_result_behind_a_transaction_pooler_reads_the_job_each_second(poel_settings, worker):
    """No LISTEN there (a pooler hands the session to others): the wait reads the job."""
    with Queue(poel_settings.dsn, jobs={}, allow_unknown=True, pooler="transaction") as queue:
        job_id = queue.enqueue("results.greenlet", {"returns": "polled"})
        waiter = gevent.spawn(queue.result, job_id, timeout=30)
        gevent.sleep(0)
        assert run_all(worker, 1) == {job_id}
        assert waiter.get(timeout=10) == "polled"


def test_an_attempt_ending_while_its_report_is_being_written_keeps_it():
    """The writer took the last report, then the attempt ended: the writer's statement may
    come after the outcome's (and match no token), so the outcome writes it too."""
    board = ProgressBoard()
    board.note(7, "token", 0.9, "almost")
    assert board.swap() == [(7, "token", 0.9, "almost")]
    assert board.take(7, "token") == (0.9, "almost")  # being written: the outcome has it too
    assert board.take(7, "other attempt") is None
    board.written()
    assert board.take(7, "token") is None
    assert board.swap() == []
