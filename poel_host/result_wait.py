"""Waiting for a job's result: what ``Queue.result(id, timeout=...)`` does.

The worker's outcome statements (``finish_jobs``, ``finish_succeeded``) each send one
``NOTIFY poel_outcomes`` (payload: the schema) for the batch they write, not one a job,
and only when a job of the batch has a waiter in ``result_waiters``: a fleet nobody waits
on pays nothing for it. A waiter opens a connection of its own, LISTENs, registers in
``result_waiters`` (removing itself when it stops waiting), then reads the job (after LISTEN, so an
outcome written in between is seen either by the read or by a notification), and reads it
again after each notification, at its deadline, and every ``RECHECK_S`` (an outcome
statement that began before the waiter registered sends no notification). A busy fleet
notifies a waiter once a batch: each wake is one primary-key read (of ``all_jobs``), and
the notifications that queued meanwhile are drained before the next read.

The job may be anywhere: still queued or running (wait), retried (queued again: wait),
finished in the jobs table or archived in ``jobs_history`` (all_jobs reads both),
``failed`` or ``cancelled`` (raise :class:`JobFailed` with its error history), or unknown
(raise :class:`JobNotFound`). Outcomes written by nobody's notifying statement (a rescue
that fails a job whose worker died, an operator's cancel) are seen at the next
notification or at the deadline. Behind a transaction pooler, which forbids LISTEN, the
job is read every ``POLL_S`` instead.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from poel_host.database import connect
from poel_host.errors import DatabaseUnavailable, JobFailed, JobNotFound, ResultTimeout
from poel_host.store import Store

CHANNEL = "poel_outcomes"  # as in sql/queries.sql (finish_jobs, listen_outcomes)
POLL_S = 1.0  # behind a transaction pooler only
KEEPALIVE_S = 30.0  # a wait with no deadline still reads the job this often
# A listening wait reads the job at least this often too: an outcome statement whose
# snapshot was taken before this waiter registered sends no notification, and the read
# after LISTEN may come just before that statement commits (a window of a statement's
# length, seen once in CI as a 30 s wait for a result written at once).
RECHECK_S = 2.0


def wait_for_result(
    store: Store, dsn: str, job_id: int, *, timeout: float | None, pooler: str = "none"
) -> Any:
    """The job's result (None if its handler returned nothing), once it has succeeded.

    :raises JobNotFound: no job has this id.
    :raises JobFailed: the job failed or was cancelled (``errors``: its error history).
    :raises ResultTimeout: (a ``TimeoutError``) ``timeout`` seconds passed first.
    """
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    listening = pooler != "transaction"
    conn = connect(dsn, name="result", pooler=pooler)
    try:
        if listening:
            store.listen_outcomes(conn)
            store.add_result_waiter(job_id, conn)
        try:
            return _wait(store, conn, job_id, deadline, timeout, listening)
        finally:
            if listening and not conn.closed and not conn.broken:
                # A row left behind (the database went away) costs one needless NOTIFY
                # and is deleted within a day: never worth hiding why the wait ended.
                with contextlib.suppress(DatabaseUnavailable):
                    store.remove_result_waiter(job_id, conn)
    finally:
        conn.close()


def _wait(
    store: Store,
    conn: Any,
    job_id: int,
    deadline: float | None,
    timeout: float | None,
    listening: bool,
) -> Any:
    """Read the job until it has ended or the deadline passed (see wait_for_result)."""
    while True:
        job = store.get_job(job_id, connection=conn)
        if job is None:
            raise JobNotFound(job_id)
        state = job["state"]
        if state == "succeeded":
            return job["result"]
        if state in ("failed", "cancelled"):
            raise JobFailed(job_id, state, job["last_error"], list(job["errors"] or []))
        left = KEEPALIVE_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            assert timeout is not None
            raise ResultTimeout(job_id, state, timeout)
        wait = min(left, KEEPALIVE_S, RECHECK_S)
        if not listening:
            time.sleep(min(wait, POLL_S))
            continue
        # Wake on the first notification of this schema, then drain those queued.
        for notify in conn.notifies(timeout=wait):
            if notify.payload == store.schema:
                break
        for _ in conn.notifies(timeout=0):
            pass
