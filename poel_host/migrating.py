"""How ``migrate`` runs the pending migrations: the session's lock, the steps, the
timeouts, and what a failure says. :mod:`poel_host.migrations` is the interface.

A run holds a session-level advisory lock from start to end, so that two migrators never
interleave, even across a migration that runs outside a transaction and so commits part
way. Consecutive transactional migrations run in one transaction (all or nothing, as
before there were others); a migration outside a transaction runs alone, one statement at
a time in autocommit, and is recorded once every statement succeeded. Each committed step
ends with ``close_schema``, so no commit leaves a new function open to PUBLIC.

Every statement waits at most ``lock_timeout`` for a lock: an ``ALTER TABLE`` queued behind
a long transaction would queue every claim behind itself, so it fails instead, naming the
migration and what to do. ``CONCURRENTLY`` statements are the exception: they wait only
for older transactions, with locks that stop no claim, and an index build may take long.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from poel_host.errors import DatabaseUnavailable, PoelError, one_line
from poel_host.sqlfiles import Migration, read_sql, with_schema
from poel_host.sqlsplit import split_statements
from poel_host.store import MigrationStore

HOST = "poel-host"
_CONCURRENTLY = re.compile(r"\bconcurrently\b", re.IGNORECASE)
Pending = list[tuple[str, Migration]]


@contextlib.contextmanager
def autocommit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The run needs autocommit: a statement outside a transaction must be outside one."""
    if conn.autocommit:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed:
            conn.autocommit = False


@contextlib.contextmanager
def session_lock(conn: psycopg.Connection[Any], store: MigrationStore, key: int) -> Iterator[None]:
    """Hold the migration lock for the run, polled with a backoff (see lock_migrations)."""
    delay = 0.01
    while not store.try_lock_migrations(conn, key):
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    try:
        yield
    finally:
        if not conn.broken:
            with contextlib.suppress(DatabaseUnavailable):
                store.unlock_migrations(conn, key)


def steps(todo: Pending) -> list[Pending]:
    """Consecutive transactional migrations together; each other one alone."""
    grouped: list[Pending] = []
    for owner, migration in todo:
        if migration.transaction and grouped and grouped[-1][-1][1].transaction:
            grouped[-1].append((owner, migration))
        else:
            grouped.append([(owner, migration)])
    return grouped


class _Failed(Exception):
    def __init__(self, owner: str, migration: Migration, cause: BaseException) -> None:
        super().__init__(owner, migration, cause)
        self.owner, self.migration, self.cause = owner, migration, cause

    @property
    def label(self) -> str:
        return f"{self.owner} {self.migration.version:04d}_{self.migration.name}"


class Run:
    """One run of ``migrate`` on a connection holding the migration lock."""

    def __init__(
        self, conn: psycopg.Connection[Any], store: MigrationStore, lock_timeout_ms: int
    ) -> None:
        self.conn, self.store, self.lock_timeout_ms = conn, store, lock_timeout_ms
        self.statement_timeout = store.migration_timeouts(conn)["statement_timeout"]
        self.applied: list[str] = []

    def migrate(self, find_pending: Callable[[psycopg.Connection[Any]], Pending]) -> None:
        try:
            self._migrate(find_pending)
        except _Failed as failed:  # raised here, once its transaction has rolled back
            raise PoelError(self._message(failed)) from None
        except DatabaseUnavailable as exc:  # the run's own statements (pending, record)
            if self.conn.broken or not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                raise
            raise PoelError(self._lock_message("migrate", "nothing was applied")) from None

    def _migrate(self, find_pending: Callable[[psycopg.Connection[Any]], Pending]) -> None:
        conn, store = self.conn, self.store
        self._timeouts(concurrently=False)
        with conn.transaction():
            store.run_script(conn, with_schema(read_sql("schema.sql"), store.schema))
            todo = steps(find_pending(conn))
            if todo and todo[0][0][1].transaction:
                for owner, migration in todo.pop(0):
                    self._apply(owner, migration)
            # Every time, so a database migrated before this step closes too.
            store.close_schema(conn)
        for step in todo:
            self._timeouts(concurrently=False)  # whatever the last migration SET
            if step[0][1].transaction:
                with conn.transaction():
                    for owner, migration in step:
                        self._apply(owner, migration)
                    store.close_schema(conn)
            else:
                self._apply_outside(*step[0])

    def _apply(self, owner: str, migration: Migration) -> None:
        self._run(owner, migration, migration.sql)
        self.store.record_migration(self.conn, owner, migration.version, migration.name)
        self.applied.append(f"{owner}:{migration.version:04d}_{migration.name}")

    def _apply_outside(self, owner: str, migration: Migration) -> None:
        for text in split_statements(migration.sql):
            concurrently = bool(_CONCURRENTLY.search(text))
            if concurrently:
                self._timeouts(concurrently=True)
            self._run(owner, migration, text)
            if concurrently:
                self._timeouts(concurrently=False)
        with self.conn.transaction():
            self.store.record_migration(self.conn, owner, migration.version, migration.name)
            self.store.close_schema(self.conn)
        self.applied.append(f"{owner}:{migration.version:04d}_{migration.name}")

    def _run(self, owner: str, migration: Migration, text: str) -> None:
        statement = with_schema(text, self.store.schema) if owner == HOST else sql.SQL(text)
        try:
            self.store.run_script(self.conn, statement)
        except (DatabaseUnavailable, psycopg.Error) as exc:
            if isinstance(exc, DatabaseUnavailable) and self.conn.broken:
                raise  # the connection was lost, not the migration wrong
            cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
            raise _Failed(owner, migration, cause or exc) from None

    def _timeouts(self, *, concurrently: bool) -> None:
        if concurrently:
            self.store.set_migration_timeouts(self.conn, "0", "0")
        else:
            lock_timeout = f"{self.lock_timeout_ms}ms"
            self.store.set_migration_timeouts(self.conn, lock_timeout, self.statement_timeout)

    def _message(self, failed: _Failed) -> str:
        outside = not failed.migration.transaction
        if isinstance(failed.cause, psycopg.errors.LockNotAvailable):
            done = (
                "its statements before that one stay applied (it runs outside a transaction)"
                if outside
                else "it was rolled back"
            )
            return self._lock_message(f"migration {failed.label}", done)
        message = f"migration {failed.label} failed: {one_line(failed.cause)}"
        if outside:
            message += (
                "; it runs outside a transaction, so its statements before the failing one"
                " stay applied and the next `poel-host migrate` runs it again from its start"
            )
        return message

    def _lock_message(self, who: str, done: str) -> str:
        return (
            f"{who} could not take a lock within {self.lock_timeout_ms} ms "
            f"(POEL_MIGRATION_LOCK_TIMEOUT_MS), and {done}: a transaction holds a table it "
            "changes, and waiting for it would have held up every claim behind it. "
            f"{self._holders()}Find it in pg_stat_activity (oldest xact_start), let it end "
            "or end it (pg_terminate_backend), then run `poel-host migrate` again"
        )

    def _holders(self) -> str:
        """Who may hold the lock: the transactions open longer than the wait."""
        try:
            rows = self.store.long_transactions(self.conn, self.lock_timeout_ms)
        except (DatabaseUnavailable, psycopg.Error):
            return ""
        if not rows:
            return ""
        listed = ", ".join(
            f"pid {r['pid']} (role {r['role']}, {r['application_name'] or 'no application'},"
            f" open {r['seconds']} s, {r['state']})"
            for r in rows
        )
        return f"Transactions open longer than that: {listed}. "
