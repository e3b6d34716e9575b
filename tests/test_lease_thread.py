"""The lease keeper in-process: its OS thread renews while this process's hub is blocked,
gives up a job past its timeout, is restarted by the supervisor when it dies, and closes
its connection when it is stopped.

This test process is patched by gevent (as ``serve`` is), so blocking the hub here blocks
every greenlet, the supervised keeper's included.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import gevent
import pytest

from poel_host.worker.held import PENDING, RUNNING, HeldJob
from poel_host.worker.leases import LeaseKeeper
from poel_host.worker.metrics import LeaseCounts
from poel_host.worker.supervisor import Supervisor

OWNER = "test-host:1:lease"
TOKEN = "00000000-0000-4000-8000-000000000016"  # the lease token of the attempts held here
LEASE_MS = 1000


class Recorder:
    """A logger that keeps what it is given: ``lines`` of (level, msg, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, msg: str, **fields: Any) -> None:
        self.lines.append((level, msg, fields))

    def debug(self, msg: str, **fields: Any) -> None:
        self._log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log("error", msg, **fields)

    def messages(self) -> list[str]:
        return [msg for _, msg, _ in self.lines]


def running_job(conn) -> int:
    """A job running under OWNER's heartbeat (no lease of its own), as serve claims."""
    return conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, attempts, lease_owner, lease_token,"
        " started_at) VALUES ('test.noop', '{}', 'running', 1, %s, %s, now()) RETURNING id",
        [OWNER, TOKEN],
    ).fetchone()["id"]


def leases_connections(conn) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'poel-host:leases'"
    ).fetchone()["n"]


def block_the_hub(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def keeper(poel_settings, poel_conn, job_lease):
    # OWNER's row in the registry, as serve writes it: its heartbeat holds OWNER's jobs.
    poel_conn.execute(
        "INSERT INTO poel.workers (owner, host, pid, version, concurrency, stale_after_ms)"
        " VALUES (%s, 'test-host', 1, 'test', 10, %s)",
        [OWNER, LEASE_MS],
    )
    log = Recorder()
    held: dict[int, HeldJob] = {}
    settings = poel_settings.model_copy(update={"lease_ms": LEASE_MS})
    keeper = LeaseKeeper(settings, owner=OWNER, held=held, log=log, counts=LeaseCounts())
    supervisor = Supervisor(log=log)
    yield SimpleNamespace(
        keeper=keeper,
        held=held,
        log=log,
        supervisor=supervisor,
        lease=lambda job_id: job_lease(poel_conn, job_id),
    )
    supervisor.stop(timeout=5)


def hold(held: dict[int, HeldJob], job_id: int, *, deadline: float = 0.0) -> HeldJob:
    entry = HeldJob(row={"id": job_id, "lease_token": TOKEN}, ctx=SimpleNamespace(log=Recorder()))  # type: ignore[arg-type]
    entry.deadline = deadline
    held[job_id] = entry
    return entry


def test_renews_while_the_hub_is_blocked_and_closes_its_connection_when_stopped(
    keeper, poel_conn, wait_for
):
    job_id = running_job(poel_conn)
    hold(keeper.held, job_id, deadline=time.monotonic() + 60)
    keeper.supervisor.start(keeper.keeper)
    gevent.sleep(0.05)  # let the keeper's greenlet start its thread
    before = keeper.lease(job_id)["lease_until"]
    block_the_hub(2.5)  # two and a half leases: without renewal, it would have expired
    after = keeper.lease(job_id)
    assert after["lease_ahead"] and after["lease_expires_at"] is None
    assert (after["lease_until"] - before).total_seconds() >= 1.5
    assert keeper.keeper.counts.renewals >= 3
    assert leases_connections(poel_conn) == 1

    keeper.supervisor.stop(timeout=5)
    # Closed by the thread before stop returned (its backend may take a moment to go).
    wait_for(lambda: leases_connections(poel_conn) == 0, what="the lease connection closed")
    renewals = keeper.keeper.counts.renewals
    gevent.sleep(3 * keeper.keeper.interval)
    assert keeper.keeper.counts.renewals == renewals  # the thread is gone
    assert keeper.log.lines == []


def test_a_job_past_its_timeout_is_given_up_once_and_others_still_renewed(keeper, poel_conn):
    late_id, fine_id, waiting_id = (running_job(poel_conn) for _ in range(3))
    late = hold(keeper.held, late_id, deadline=time.monotonic() - 5)
    hold(keeper.held, fine_id, deadline=time.monotonic() + 60)
    hold(keeper.held, waiting_id)  # claimed, not started yet: no deadline
    keeper.supervisor.start(keeper.keeper)
    gevent.sleep(0.05)
    block_the_hub(2.5)
    assert keeper.lease(fine_id)["lease_ahead"] and keeper.lease(waiting_id)["lease_ahead"]
    assert not keeper.lease(late_id)["lease_ahead"]
    assert [m for _, m, _ in late.ctx.log.lines] == [
        "job past its timeout: lease given up, another worker can take the job"
    ]
    assert keeper.keeper.counts.given_up == 1
    assert not late.lost  # its outcome, if it comes before a rescue, may still be recorded


def test_an_outcome_not_written_keeps_its_lease_only_until_a_lease_past_its_deadline(
    keeper, poel_conn
):
    """An outcome with the completer (which may be waiting for the database) keeps its
    lease past the job's deadline, but not for ever: a lease past it, it is given up."""
    recent_id, old_id = running_job(poel_conn), running_job(poel_conn)
    recent = hold(keeper.held, recent_id, deadline=time.monotonic() - 0.01)
    old = hold(keeper.held, old_id, deadline=time.monotonic() - 30)
    for entry in (recent, old):
        entry.move(RUNNING)
        entry.move(PENDING)
    keeper.supervisor.start(keeper.keeper)
    gevent.sleep(0.05)
    block_the_hub(0.6)  # within the recent one's lease of grace
    assert keeper.lease(recent_id)["lease_ahead"]
    assert recent.ctx.log.lines == []
    assert [m for _, m, _ in old.ctx.log.lines] == [
        "job outcome still not written a lease past its deadline: lease given up"
    ]


def test_a_dead_thread_is_reported_and_restarted_by_the_supervisor(keeper, poel_conn, wait_for):
    job_id = running_job(poel_conn)
    hold(keeper.held, job_id, deadline=time.monotonic() + 60)
    real_renew = keeper.keeper.renew
    calls = []

    def renew_failing_once(store):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a surprise in the lease thread")
        real_renew(store)

    keeper.keeper.renew = renew_failing_once
    keeper.supervisor.start(keeper.keeper)
    died = wait_for(
        lambda: next(
            (f for lvl, m, f in keeper.log.lines if m == "service died; restarting"), None
        ),
        what="the keeper reported dead",
    )
    assert died["service"] == "leases"
    assert "a surprise in the lease thread" in died["error"]
    wait_for(lambda: "service running again" in keeper.log.messages(), what="restarted")
    assert keeper.supervisor.failing == {}
    assert keeper.lease(job_id)["lease_ahead"]
    # The dead thread closed its own (its backend may take a moment to go).
    wait_for(lambda: leases_connections(poel_conn) == 1, what="one lease connection")
