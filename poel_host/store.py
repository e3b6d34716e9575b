"""The store: the only code that runs SQL against Poel's tables.

One method per named block of ``sql/queries.sql``; callers (the queue client, the worker's
services, the CLI, health, migrations, the test kit) never see SQL or a cursor. A store
runs each statement through its *source* (a pool or one kept connection, both from
:mod:`poel_host.database`), or on the caller's connection when one is passed (an enqueue
inside the caller's transaction). Driver errors that mean the database could not be used
(``DB_ERRORS``) are translated here into :class:`~poel_host.errors.DatabaseUnavailable`,
so every service catches one exception and every message has the password masked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from poel_host.errors import DatabaseUnavailable, PoelError, one_line
from poel_host.settings import redact_dsn
from poel_host.sqlfiles import parse_blocks, read_sql, with_schema
from poel_host.storable import storable_delay_ms, storable_error, storable_traceback

T = TypeVar("T")
Conn = psycopg.Connection[Any]
# One attempt's outcome: (job id, lease token, state, error, retry delay ms, traceback).
OutcomeRow = tuple[int, str, str, str | None, float, str | None]
# What means "the database could not be used": lost or refused connections, a pool that
# gave no connection in time. Anything else (a constraint, a syntax error) is a bug or bad
# input and keeps its own type.
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


class Source(Protocol):
    """Where a store gets its connection: ``run(work)`` calls ``work(conn)``."""

    def run(self, work: Callable[[Conn], T]) -> T: ...


@functools.cache
def _blocks() -> dict[str, str]:
    return parse_blocks(read_sql("queries.sql"))


# Blocks written into a statement for each lane (one branch per job type), not alone.
_TEMPLATES = {"claim_jobs", "ready_jobs"}


@functools.cache
def queries(schema: str) -> dict[str, sql.Composed]:
    """Every block of ``queries.sql`` with ``schema`` filled in, composed once per schema."""
    return {
        name: with_schema(text, schema)
        for name, text in _blocks().items()
        if name not in _TEMPLATES
    }


@functools.cache
def claim_query(schema: str, job_types: int) -> sql.Composed:
    """``claim_jobs`` for a lane of ``job_types`` types: one ``ready_jobs`` branch each,
    so that the server merges the types' index scans in claim order."""
    blocks, name = _blocks(), sql.Identifier(schema)
    branches = [
        sql.SQL(blocks["ready_jobs"]).format(schema=name, type_number=sql.Literal(number))
        for number in range(1, job_types + 1)
    ]
    return sql.SQL(blocks["claim_jobs"]).format(
        schema=name, ready_jobs=sql.SQL(" UNION ALL ").join(branches)
    )


class Store:
    """Poel's tables in one schema, reached through ``source``."""

    def __init__(self, schema: str, source: Source | None = None) -> None:
        self.schema = schema
        self.source = source
        self._q = queries(schema)

    # Plumbing ---------------------------------------------------------------------------

    def _run(self, work: Callable[[Conn], T], connection: Conn | None = None) -> T:
        try:
            if connection is not None:
                return work(connection)
            if self.source is None:
                raise AssertionError("this Store has no source: pass connection=")
            return self.source.run(work)
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"database unavailable: {redact_dsn(one_line(exc))}") from exc

    def _all(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> list[dict[str, Any]]:
        query = self._q[name]
        # dict rows whatever the connection's own row factory (a caller's may be tuples)
        return self._run(
            lambda conn: conn.cursor(row_factory=dict_row).execute(query, params).fetchall(),
            connection,
        )

    def _one(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> dict[str, Any] | None:
        rows = self._all(name, params, connection)
        return rows[0] if rows else None

    def _execute(
        self, name: str, params: dict[str, Any] | None = None, connection: Conn | None = None
    ) -> None:
        """A statement whose rows (if any) nobody reads."""
        query = self._q[name]
        self._run(lambda conn: conn.execute(query, params), connection)

    def _ids(self, name: str, params: dict[str, Any], connection: Conn | None = None) -> set[int]:
        return {int(row["id"]) for row in self._all(name, params, connection)}

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
        lease_ms: int,
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due jobs under the lease token ``token`` (new for each
        claim; see ``claim_jobs`` in the SQL)."""
        params = {
            "job_types": list(job_types),
            "queues": None if queues is None else list(queues),
            "limit": limit,
            "owner": owner,
            "token": token,
            "lease_ms": lease_ms,
        }
        if not job_types:
            return []
        query = claim_query(self.schema, len(job_types))
        return self._run(
            lambda conn: conn.cursor(row_factory=dict_row).execute(query, params).fetchall(),
            None,
        )

    def promote_due(self, *, limit: int, connection: Conn | None = None) -> int:
        """Mark ready up to ``limit`` future jobs that have become due; how many."""
        return len(self._all("promote_due", {"limit": limit}, connection))

    def finish(self, outcomes: Sequence[OutcomeRow]) -> set[int]:
        """Record ``(job id, lease token, state, error, retry delay ms, traceback)``
        outcomes; the ids written (an attempt whose lease was lost is not). Every text is
        made storable here, and every delay clamped: nothing a handler raised can make the
        statement fail for the outcomes beside it."""
        succeeded = [o for o in outcomes if o[2] == "succeeded"]
        others = [o for o in outcomes if o[2] != "succeeded"]

        def write(conn: Conn) -> set[int]:
            # Two autocommit statements, not a transaction (two more round trips a batch):
            # written again after a failure, the first's rows are simply not returned.
            written: set[int] = set()
            if succeeded:
                # The common case, through a statement with two array parameters.
                params: dict[str, Any] = {
                    "ids": [o[0] for o in succeeded],
                    "tokens": [o[1] for o in succeeded],
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
                }
                written.update(r["id"] for r in conn.execute(self._q["finish_jobs"], params))
            return written

        return self._run(write)

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
        }
        return {int(r["id"]): bool(r["counted"]) for r in self._all("release_jobs", params)}

    def release_claims(self, tokens: Sequence[str]) -> list[int]:
        """Hand back the jobs of claims whose answer was lost; the ids released."""
        return sorted(self._ids("release_claims", {"tokens": list(tokens)}))

    def heartbeat(
        self, owner: str, *, attempts: Sequence[tuple[int, str]], lease_ms: int, draining: bool
    ) -> tuple[bool, set[int]]:
        """The worker's heartbeat and the renewal of the leases of ``(job id, lease
        token)`` attempts, in one statement: (whether its registry row exists, the ids
        renewed; the others are lost)."""
        params = {
            "ids": [a[0] for a in attempts],
            "tokens": [a[1] for a in attempts],
            "owner": owner,
            "lease_ms": lease_ms,
            "draining": draining,
        }
        row = self._one("heartbeat", params)
        assert row is not None  # the statement always answers one row
        return bool(row["registered"]), {int(i) for i in row["renewed"]}

    def recover_expired(self, *, base_ms: int, max_ms: int) -> list[dict[str, Any]]:
        """Requeue after a backoff (or fail) jobs whose lease expired: ``[{id, state}]``."""
        return self._all("recover_expired", {"base_ms": base_ms, "max_ms": max_ms})

    def prune_finished(
        self, *, succeeded_hours: float, failed_hours: float | None, batch: int
    ) -> int:
        """Delete up to ``batch`` finished jobs past their retention; how many."""
        params = {"succeeded_hours": succeeded_hours, "failed_hours": failed_hours, "batch": batch}
        return len(self._all("prune_finished", params))

    def set_statement_timeout(self, conn: Conn, ms: int, *, local: bool) -> None:
        """Bound the statements a handler runs on ``conn`` (see the SQL's comment)."""
        self._execute("set_statement_timeout", {"ms": str(ms), "local": local}, conn)

    def listen(self, conn: Conn) -> None:
        """Subscribe ``conn`` to the notification the jobs table sends on insert."""
        self._execute("listen", None, conn)

    def ping(self, conn: Conn | None = None) -> None:
        """One round trip: raises DatabaseUnavailable if the database does not answer."""
        self._execute("ping", None, conn)

    # The registry of workers ------------------------------------------------------------

    def register_worker(self, worker: dict[str, Any]) -> None:
        """Write this worker's row (see ``register_worker`` in the SQL for the keys)."""
        self._execute("register_worker", {**worker, "plugins": Jsonb(worker["plugins"])})

    def set_worker_draining(self, owner: str) -> None:
        self._execute("set_worker_draining", {"owner": owner})

    def unregister_worker(self, owner: str) -> None:
        self._execute("unregister_worker", {"owner": owner})

    def expire_workers(self, *, keep_s: float) -> list[dict[str, Any]]:
        """Mark workers whose heartbeat stopped gone, delete those gone for ``keep_s``:
        ``[{change: gone|removed, owner, host, pid, heartbeat_at}]``."""
        return self._all("expire_workers", {"keep_s": keep_s})

    def list_workers(self) -> list[dict[str, Any]]:
        return self._all("list_workers")

    def queue_depths(self, *, cap: int) -> list[dict[str, Any]]:
        """Due queued jobs by queue and type, counted up to ``cap``:
        ``[{queue, job_type, depth, oldest_s}]``."""
        return self._all("queue_depths", {"cap": cap})

    # Looking and changing (CLI, test kit) -----------------------------------------------

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        return self._one("get_job", {"id": job_id})

    def list_jobs(
        self, *, state: str | None = None, job_type: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Recent jobs, newest first."""
        return self._all("list_jobs", {"state": state, "job_type": job_type, "limit": limit})

    def find_jobs(
        self, *, job_type: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobs oldest first, with their payloads."""
        return self._all("find_jobs", {"job_type": job_type, "state": state})

    def count_by_state(self) -> dict[str, int]:
        return {row["state"]: int(row["count"]) for row in self._all("count_by_state")}

    def cancel_job(self, job_id: int) -> bool:
        """Cancel a queued job; False if it is not queued."""
        return self._one("cancel_job", {"id": job_id}) is not None

    def retry_job(self, job_id: int) -> bool:
        """Queue a failed or cancelled job again with fresh attempts; False if it is not."""
        try:
            return self._one("retry_job", {"id": job_id}) is not None
        except psycopg.errors.UniqueViolation:
            raise PoelError(
                f"job {job_id} cannot be retried: a live job of its type holds its unique_key"
            ) from None

    def make_due(self, job_id: int) -> bool:
        """Make a queued job due now; False if it is not queued."""
        return self._one("make_due", {"id": job_id}) is not None

    # The dashboard ----------------------------------------------------------------------

    def running_counts(self) -> list[dict[str, Any]]:
        return self._all("dashboard_running_counts")

    def failed_counts(self) -> dict[str, int]:
        return {r["job_type"]: int(r["count"]) for r in self._all("dashboard_failed_counts")}

    def finished_last_hour(self) -> list[dict[str, Any]]:
        """``[{queue, job_type, state, minute, count}]`` for jobs finished in the last hour."""
        return self._all("dashboard_last_hour")

    def browse_jobs(
        self,
        *,
        state: str | None,
        job_type: str | None,
        queue: str | None,
        error: str | None,
        before: int,
        limit: int,
        window: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The jobs page: up to ``limit`` jobs newest first below id ``before``, filtered,
        and where the next page starts (None: no older job). Failed jobs are found through
        their own index; other filters look at ``window`` jobs at most (see the SQL)."""
        params = {
            "state": state,
            "job_type": job_type,
            "queue": queue,
            "error": error,
            "before": before,
            "limit": limit,
            "window": window,
        }
        if state == "failed":  # the dead letter's own index
            rows = self._all("dashboard_failed_jobs", params)
            return rows, (rows[-1]["id"] if len(rows) == limit else None)
        found = self._all("dashboard_jobs", params)
        scanned, lowest = found[0]["scanned"], found[0]["lowest"]
        rows = [row for row in found if row["id"] is not None]
        if len(rows) == limit:
            return rows, rows[-1]["id"]
        return rows, (lowest if scanned == window else None)

    def running_jobs(self, *, limit: int) -> list[dict[str, Any]]:
        return self._all("dashboard_running", {"limit": limit})

    def last_slots(self) -> dict[str, Any]:
        return {r["job_type"]: r["slot"] for r in self._all("dashboard_last_slots")}

    def delete_finished_job(self, job_id: int) -> dict[str, Any] | None:
        """Delete a finished job: ``{id, job_type}``, or None if it is not finished."""
        return self._one("dashboard_delete_job", {"id": job_id})

    def retry_failed_of_type(self, job_type: str) -> list[int]:
        """Queue every failed job of ``job_type`` again; their ids."""
        try:
            return sorted(self._ids("dashboard_retry_failed_type", {"job_type": job_type}))
        except psycopg.errors.UniqueViolation:
            raise PoelError(
                f"the failed {job_type} jobs cannot all be retried: a live job of that type "
                "holds the unique_key of one of them; retry them one by one"
            ) from None

    def audit(
        self,
        *,
        actor: str,
        address: str | None,
        action: str,
        job_id: int | None = None,
        job_type: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        params = {
            "actor": actor,
            "address": address,
            "action": action,
            "job_id": job_id,
            "job_type": job_type,
            "detail": Jsonb(detail or {}),
        }
        self._execute("dashboard_audit", params)

    def audit_log(self, *, limit: int) -> list[dict[str, Any]]:
        return self._all("dashboard_audit_log", {"limit": limit})

    # Migrations (run on the migrating connection, inside its transaction) ---------------

    def lock_migrations(self, conn: Conn, key: int) -> None:
        self._execute("lock_migrations", {"key": key}, conn)

    def applied_migrations(self, conn: Conn) -> set[tuple[str, int]]:
        exists = self._one("migrations_table_exists", {"schema": self.schema}, conn)
        if not exists or not exists["ok"]:
            return set()
        return {(r["plugin"], r["version"]) for r in self._all("applied_migrations", None, conn)}

    def run_script(self, conn: Conn, script: sql.SQL | sql.Composed) -> None:
        """Run a migration's (or the bootstrap's) SQL text on the migrating connection."""
        self._run(lambda c: c.execute(script), conn)

    def record_migration(self, conn: Conn, plugin: str, version: int, name: str) -> None:
        params = {"plugin": plugin, "version": version, "name": name}
        self._execute("record_migration", params, conn)
