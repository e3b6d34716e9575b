"""The store's job path: what moves a job from enqueued to finished. Enqueueing (the
queue client, the scheduler), and the worker's claim, finish, lease renewal, release,
rescue, promotion and pruning: the statements that run on every job, kept apart from the
looking and changing that people do (:mod:`.operators`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import dict_row

from poel_host.storable import (
    storable_delay_ms,
    storable_error,
    storable_message,
    storable_traceback,
)
from poel_host.store.base import Conn, StoreBase, claim_query

# One attempt's outcome: (job id, lease token, state, error, retry delay ms, traceback,
# result as JSON text, the last progress fraction and message not yet written).
OutcomeRow = tuple[
    int, str, str, str | None, float, str | None, str | None, float | None, str | None
]
# A running attempt's latest progress: (job id, lease token, fraction, message).
ProgressRow = tuple[int, str, float, str | None]


class JobStore(StoreBase):
    """Enqueueing and the worker's job path."""

    # Enqueueing -------------------------------------------------------------------------

    def enqueue_jobs(
        self, columns: dict[str, list[Any]], connection: Conn | None = None
    ) -> list[int | None]:
        """Insert jobs given as columns (``job_types``, ``payloads``, ...; see the SQL):
        their ids in request order, ``None`` where a live job holds the unique key."""
        rows = self._all("enqueue_jobs", {**columns, "schema": self.schema}, connection)
        return [None if row["id"] is None else int(row["id"]) for row in rows]

    def find_live_unique(
        self, job_type: str, unique_key: str, connection: Conn | None = None
    ) -> int | None:
        params = {"job_type": job_type, "unique_key": unique_key}
        row = self._one("find_live_unique", params, connection)
        return None if row is None else int(row["id"])

    def enqueue_slot(
        self, *, job_type: str, slot: Any, priority: int, queue: str, max_attempts: int
    ) -> int | None:
        """Enqueue a periodic job for ``slot`` unless a worker did; its id, or None."""
        params = {
            "job_type": job_type,
            "slot": slot,
            "priority": priority,
            "queue": queue,
            "max_attempts": max_attempts,
        }
        row = self._one("enqueue_slot", params)
        return None if row is None else int(row["id"])

    def prune_slots(self) -> None:
        """Forget old slots (keeping each type's latest)."""
        self._execute("prune_slots")

    # The worker's job path --------------------------------------------------------------

    def claim_jobs(
        self,
        *,
        job_types: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        owner: str,
        token: str,
        lease_ms: int | None,
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due jobs under the lease token ``token`` (new for each
        claim; see ``claim_jobs`` in the SQL), held by the worker's heartbeat, or with a
        lease of ``lease_ms`` of their own when the claimer has no heartbeat."""
        params = _claim_params(job_types, queues, limit, owner, token, lease_ms)
        if not job_types:
            return []
        query = claim_query(self.schema, len(job_types))
        return self._run(
            lambda conn: conn.cursor(row_factory=dict_row).execute(query, params).fetchall()
        )

    def claim_steered(
        self,
        *,
        job_types: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        owner: str,
        token: str,
        lease_ms: int | None,
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Claim up to ``limit`` jobs of steered types and queues under their limits (see
        ``claim_steered`` in migration 0020): the rows, and in how many seconds a rate
        window this claim found full opens again (None when none did)."""
        params = _claim_params(job_types, queues, limit, owner, token, lease_ms)
        rows = self._all("claim_steered", params)
        reopens = [row["reopens_in"] for row in rows if row["id"] is None]
        jobs = [row for row in rows if row["id"] is not None]
        for row in jobs:
            del row["reopens_in"]
        return jobs, (min(reopens) if reopens else None)

    def declare_steering(self, rows: dict[str, list[Any]], connection: Conn | None = None) -> None:
        """Write the steering a serve's plugins declare (``job_steering.declared_rows``)."""
        self._execute("declare_steering", rows, connection)

    def steered_names(self) -> tuple[set[str], bool]:
        """The steered job types, and whether any queue is steered."""
        rows = self._all("steered_names", None)
        return {r["name"] for r in rows if r["kind"] == "type"}, any(
            r["kind"] == "queue" for r in rows
        )

    def promote_due(self, *, limit: int, connection: Conn | None = None) -> int:
        """Mark ready up to ``limit`` future jobs that have become due; how many."""
        return len(self._all("promote_due", {"limit": limit}, connection))

    def finish(self, outcomes: Sequence[OutcomeRow]) -> set[int]:
        """Record outcomes (see ``OutcomeRow``); the ids written (an attempt whose lease
        was lost is not). Every text is made storable here, and every delay clamped:
        nothing a handler raised can make the statement fail for the outcomes beside it
        (a result is checked where it is made: see :mod:`poel_host.results`).

        Successes with no result and no progress left to write (what a handler returning
        None costs) go through ``finish_succeeded``, two arrays; the rest, results
        included, through ``finish_jobs``: a job path that returns nothing pays for no
        result column, and one that does pays for a few more array elements, not a
        statement. State ``snoozed`` (the handler asked to run later; its attempt not
        counted) is written by a statement of its own, ``snooze_jobs``, so that the
        common statements do no more for it."""
        succeeded = [o for o in outcomes if o[2] == "succeeded" and o[6] is None and o[7] is None]
        snoozed = [o for o in outcomes if o[2] == "snoozed"]
        others = [
            o
            for o in outcomes
            if o[2] != "snoozed" and not (o[2] == "succeeded" and o[6] is None and o[7] is None)
        ]

        def write(conn: Conn) -> set[int]:
            # Two autocommit statements, not a transaction (two more round trips a batch):
            # written again after a failure, the first's rows are simply not returned.
            written: set[int] = set()
            if succeeded:
                # The common case, through a statement with two array parameters.
                params: dict[str, Any] = {
                    "ids": [o[0] for o in succeeded],
                    "tokens": [o[1] for o in succeeded],
                    "schema": self.schema,
                }
                written.update(r["id"] for r in conn.execute(self._q["finish_succeeded"], params))
            if others:
                params = {
                    "ids": [o[0] for o in others],
                    "tokens": [o[1] for o in others],
                    "states": [o[2] for o in others],
                    "errors": [storable_error(o[3]) for o in others],
                    "delays_ms": [storable_delay_ms(o[4]) for o in others],
                    "tracebacks": [storable_traceback(o[5]) for o in others],
                    "results": [o[6] for o in others],
                    "progresses": [o[7] for o in others],
                    "progress_messages": [storable_message(o[8]) for o in others],
                    "schema": self.schema,
                }
                written.update(r["id"] for r in conn.execute(self._q["finish_jobs"], params))
            if snoozed:
                params = {
                    "ids": [o[0] for o in snoozed],
                    "tokens": [o[1] for o in snoozed],
                    "delays_ms": [storable_delay_ms(o[4]) for o in snoozed],
                    "schema": self.schema,
                }
                written.update(r["id"] for r in conn.execute(self._q["snooze_jobs"], params))
            return written

        return self._run(write)

    def write_progress(self, rows: Sequence[ProgressRow]) -> set[int]:
        """Write the latest ``(job id, lease token, fraction, message)`` of running
        attempts, in one statement; the ids written (a lost attempt's is not)."""
        params = {
            "ids": [r[0] for r in rows],
            "tokens": [r[1] for r in rows],
            "progresses": [r[2] for r in rows],
            "messages": [storable_message(r[3]) for r in rows],
        }
        return self._ids("write_progress", params)

    def release_jobs(
        self, attempts: Sequence[tuple[int, str]], *, started: bool, max_handbacks: int
    ) -> dict[int, bool]:
        """Hand ``(job id, lease token)`` attempts back to the queue: {id: whether the
        hand-back counted as an attempt} for those released. Only ``started`` attempts
        (stopped by a shutdown) count toward ``max_handbacks`` (see the SQL)."""
        params = {
            "ids": [a[0] for a in attempts],
            "tokens": [a[1] for a in attempts],
            "started": started,
            "max_handbacks": max_handbacks,
            "schema": self.schema,
        }
        return {int(r["id"]): bool(r["counted"]) for r in self._all("release_jobs", params)}

    def release_claims(self, tokens: Sequence[str]) -> list[int]:
        """Hand back the jobs of claims whose answer was lost; the ids released."""
        return sorted(self._ids("release_claims", {"tokens": list(tokens), "schema": self.schema}))

    def heartbeat(
        self, owner: str, *, attempts: Sequence[tuple[int, str]], draining: bool
    ) -> tuple[bool, set[int], set[int]]:
        """The worker's heartbeat (the lease of every job it holds), and which of its
        ``(job id, lease token)`` attempts are still its own, in one statement: (whether
        its registry row exists, the ids kept (the others are lost), the kept ones asked
        to stop: see ``cancel_job``)."""
        params = {
            "ids": [a[0] for a in attempts],
            "tokens": [a[1] for a in attempts],
            "owner": owner,
            "draining": draining,
        }
        row = self._one("heartbeat", params)
        assert row is not None  # the statement always answers one row
        kept, cancel = {int(i) for i in row["kept"]}, {int(i) for i in row["cancel"]}
        return bool(row["registered"]), kept, cancel

    def give_up_leases(self, attempts: Sequence[tuple[int, str]]) -> set[int]:
        """Let the leases of ``(job id, lease token)`` attempts expire now, for any
        rescuer to take their jobs back; the ids given up."""
        params = {"ids": [a[0] for a in attempts], "tokens": [a[1] for a in attempts]}
        return self._ids("give_up_leases", params)

    def recover_expired(
        self, *, base_ms: int, max_ms: int, connection: Conn | None = None
    ) -> list[dict[str, Any]]:
        """Requeue after a backoff (or fail) jobs whose worker was lost or whose own lease
        expired: ``[{id, state}]``."""
        params = {"base_ms": base_ms, "max_ms": max_ms, "schema": self.schema}
        return self._all("recover_expired", params, connection)

    def set_statement_timeout(self, conn: Conn, ms: int, *, local: bool) -> None:
        """Bound the statements a handler runs on ``conn`` (see the SQL's comment)."""
        self._execute("set_statement_timeout", {"ms": str(ms), "local": local}, conn)

    def listen(self, conn: Conn) -> None:
        """Subscribe ``conn`` to the notification the jobs table sends on insert, and to
        the one a running job's cancel request sends."""
        self._execute("listen", None, conn)
        self._execute("listen_cancel", None, conn)

    def listen_outcomes(self, conn: Conn) -> None:
        """Subscribe ``conn`` to the notification written outcomes send (Queue.result)."""
        self._execute("listen_outcomes", None, conn)

    def add_result_waiter(self, job_id: int, conn: Conn) -> None:
        """Say that ``conn``'s owner waits for ``job_id``: its outcome will notify."""
        self._execute("add_result_waiter", {"id": job_id}, conn)

    def remove_result_waiter(self, job_id: int, conn: Conn) -> None:
        """Say that one waiter for ``job_id`` stopped waiting."""
        self._execute("remove_result_waiter", {"id": job_id}, conn)


def _claim_params(
    job_types: Sequence[str],
    queues: Sequence[str] | None,
    limit: int,
    owner: str,
    token: str,
    lease_ms: int | None,
) -> dict[str, Any]:
    """The parameters of both claims (plain and steered)."""
    return {
        "job_types": list(job_types),
        "queues": None if queues is None else list(queues),
        "limit": limit,
        "owner": owner,
        "token": token,
        "lease_ms": lease_ms,
    }
