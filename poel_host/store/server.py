"""The store's questions about the server itself: whether autovacuum may clean the jobs
table (asked once as ``serve`` starts) and how the server sees that table (row versions,
last vacuum, sizes: read beside the queue depths for ``/metrics``). Both read only the
server's catalogs and statistics views, never Poel's rows.
"""

from __future__ import annotations

from typing import Any

from poel_host.store.base import Conn, StoreBase


class ServerStore(StoreBase):
    """The server's settings and statistics about Poel's jobs table."""

    def autovacuum_settings(self, connection: Conn | None = None) -> dict[str, Any] | None:
        """``{server_autovacuum, track_counts, table_autovacuum}`` (the last None when the
        table does not set ``autovacuum_enabled``), or None without a jobs table."""
        return self._one("autovacuum_settings", {"schema": self.schema}, connection)

    def jobs_table_stats(self, connection: Conn | None = None) -> dict[str, Any] | None:
        """``{live_tuples, dead_tuples, last_vacuum_age_s, autovacuums, table_bytes,
        index_bytes: {index name: bytes}}`` (``last_vacuum_age_s`` None if never vacuumed
        since the statistics were reset), or None without a jobs table."""
        return self._one("jobs_table_stats", {"schema": self.schema}, connection)
