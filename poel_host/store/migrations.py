"""The store's statements for migrating: run on the migrating connection, inside its
transaction, by :mod:`poel_host.migrations` alone.
"""

from __future__ import annotations

from psycopg import sql

from poel_host.store.base import Conn, StoreBase


class MigrationStore(StoreBase):
    """The lock, the record and the scripts of migrations."""

    def lock_migrations(self, conn: Conn, key: int) -> None:
        self._execute("lock_migrations", {"key": key}, conn)

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
