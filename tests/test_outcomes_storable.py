"""Issue 16: no error text a handler produces can stop the outcomes of other jobs.

An error message with a NUL byte (an ID3 tag's raw text), a lone surrogate, megabytes of
text, an exception whose ``str()`` raises, or a retry delay no ``interval`` can hold used
to make the completer's statement fail for the whole batch, for ever: every later outcome
of that worker stayed in memory and its jobs ``running``. Each is now stored (made
storable at the store's one boundary) and the jobs beside it finish."""

from __future__ import annotations

import time

import pytest

from poel_host import Queue
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.worker import Worker
from poel_host.worker.outcomes import Outcome

BAD = ["error_nul", "error_surrogate", "error_huge", "error_unprintable", "error_nul_str"]


@pytest.fixture
def chaos(poel_settings):
    plugins = load_plugins(["poel-testchaos"])
    assert plugins.failed == []
    worker = Worker(poel_settings, plugins, log=get_logger())
    queue = Queue(poel_settings.dsn, jobs=plugins.jobs)
    yield worker, queue
    worker.close()
    queue.close()


@pytest.mark.parametrize("bad", BAD)
def test_an_unstorable_error_is_recorded_and_its_batch_finishes(chaos, poel_conn, bad):
    worker, queue = chaos
    bad_id = queue.enqueue("chaos.greenlet", {"do": [bad]}, max_attempts=1)
    plain = [queue.enqueue("chaos.greenlet", {"key": str(i)}) for i in range(20)]
    assert run_all(worker, 21) == {bad_id, *plain}
    rows = {
        r["id"]: r for r in poel_conn.execute("SELECT id, state, last_error, errors FROM poel.jobs")
    }
    assert all(rows[i]["state"] == "succeeded" for i in plain)
    failed = rows[bad_id]
    assert failed["state"] == "failed"
    text = failed["last_error"]
    assert "\x00" not in text
    assert len(text.encode()) <= 64 * 1024
    if bad == "error_nul":
        assert text.startswith("ValueError: bad") and text.endswith("byte")
    assert failed["errors"][-1]["error"] == text


def test_a_retry_delay_no_interval_holds_is_recorded(chaos, poel_conn):
    worker, queue = chaos
    job_id = queue.enqueue("chaos.far_backoff", {"do": ["error_nul"]})
    plain = queue.enqueue("chaos.greenlet", {})
    assert run_all(worker, 2) == {job_id, plain}
    row = poel_conn.execute(
        "SELECT state, run_at > now() + interval '300 days' AS far FROM poel.jobs WHERE id = %s",
        [job_id],
    ).fetchone()
    assert row == {"state": "queued", "far": True}


def test_a_row_that_cannot_be_written_does_not_block_the_others(chaos, poel_conn):
    """Whatever makes one outcome's statement fail (here a state the column does not know),
    the others of its batch are written, and the bad one is recorded as a worker error."""
    worker, queue = chaos
    worker.open()
    ids = sorted(queue.enqueue("chaos.greenlet", {}) for _ in range(3))
    rows = {r["id"]: r for r in worker.producer.claim(worker.lanes[0], 3)}
    assert sorted(rows) == ids
    batch = [
        Outcome(ids[0], "succeeded", token=rows[ids[0]]["lease_token"]),
        Outcome(ids[1], "no-such-state", "boom", token=rows[ids[1]]["lease_token"]),
        Outcome(ids[2], "queued", "retry me", 10, token=rows[ids[2]]["lease_token"]),
    ]
    worker.completer.write(batch)
    found = {
        r["id"]: r
        for r in poel_conn.execute("SELECT id, state, last_error FROM poel.jobs ORDER BY id")
    }
    assert [found[i]["state"] for i in ids] == ["succeeded", "failed", "queued"]
    assert found[ids[1]]["last_error"].startswith(
        "worker error: the attempt's outcome (no-such-state) could not be recorded: "
    )
    assert found[ids[2]]["last_error"] == "retry me"


def run_all(worker: Worker, count: int, timeout: float = 20.0) -> set[int]:
    """Run what is due until ``count`` jobs ran (run_once claims up to the free runners)."""
    ran: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ran) < count and time.monotonic() < deadline:
        ran.update(worker.run_once())
    return ran
