"""The store's statements for migrating: run on the migrating connection by
:mod:`poel_host.migrations` alone.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from poel_host.store.base import Conn, StoreBase


class MigrationStore(StoreBase):
    """The lock, the timeouts, the record and the scripts of migrations."""

    def try_lock_migrations(self, conn: Conn, key: int) -> bool:
        """Take the session's migration lock if no other session holds it."""
        row = self._one("lock_migrations", {"key": key}, conn)
        return bool(row and row["locked"])

    def unlock_migrations(self, conn: Conn, key: int) -> None:
        self._execute("unlock_migrations", {"key": key}, conn)

    def migration_timeouts(self, conn: Conn) -> dict[str, str]:
        """The session's ``lock_timeout`` and ``statement_timeout``, as settings text."""
        row = self._one("migration_timeouts", None, conn)
        assert row is not None
        return {"lock_timeout": row["lock_timeout"], "statement_timeout": row["statement_timeout"]}

    def set_migration_timeouts(self, conn: Conn, lock_timeout: str, statement_timeout: str) -> None:
        params = {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout}
        self._execute("set_migration_timeouts", params, conn)

    def long_transactions(self, conn: Conn, ms: int) -> list[dict[str, Any]]:
        """The oldest transactions open longer than ``ms``: who may hold a lock."""
        return self._all("long_transactions", {"ms": ms}, conn)

    def applied_migrations(self, conn: Conn) -> set[tuple[str, int]]:
        exists = self._one("migrations_table_exists", {"schema": self.schema}, conn)
        if not exists or not exists["ok"]:
            return set()
        return {(r["plugin"], r["version"]) for r in self._all("applied_migrations", None, conn)}

    def close_schema(self, conn: Conn) -> None:
        """Take from PUBLIC whatever it holds in the schema (see ``close_schema``)."""
        self._execute("close_schema", None, conn)

    def run_script(self, conn: Conn, script: sql.SQL | sql.Composed) -> None:
        """Run a migration's (or the bootstrap's) SQL text on the migrating connection."""
        self._run(lambda c: c.execute(script), conn)

    def record_migration(self, conn: Conn, plugin: str, version: int, name: str) -> None:
        params = {"plugin": plugin, "version": version, "name": name}
        self._execute("record_migration", params, conn)
