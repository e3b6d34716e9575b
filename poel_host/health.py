"""The worker's health, as ``GET /health`` reports it.

Unhealthy (503, with a reason) while the worker drains, while it has a problem that stops
its work (a service dead and waiting to be restarted, outcomes it cannot record, children
that cannot start: see ``worker/problems.py``), or while the database does not answer.
The database check uses its own kept connection, not the job pool, so it answers even
when every pooled connection is busy with long jobs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import gevent

from poel_host.database import KeptConnection
from poel_host.dsn import redact_dsn
from poel_host.errors import DatabaseUnavailable
from poel_host.settings import Settings
from poel_host.store import Store

CHECK_TIMEOUT_S = 3.0


class Health:
    def __init__(self, settings: Settings, *, failing: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.draining = False
        self.failing = failing if failing is not None else {}  # part -> why it cannot work
        self._conn = KeptConnection(
            settings.dsn, name="health", pooler=settings.pooler, connect_timeout=2
        )
        self._store = Store(settings.schema_name, self._conn)

    def check_database(self) -> str | None:
        """None when PostgreSQL answers a query, else the reason (no secrets)."""
        try:
            with gevent.Timeout(CHECK_TIMEOUT_S):
                kept = self._conn.is_open
                try:
                    self._store.ping()
                except DatabaseUnavailable:
                    if not kept:
                        raise
                    # The connection kept from the last check was ended meanwhile (its
                    # farewell not read yet): that says nothing about now. A ping is safe
                    # to repeat, on a new connection.
                    self._store.ping()
            return None
        except gevent.Timeout:
            return f"database did not answer within {CHECK_TIMEOUT_S:g}s"
        except DatabaseUnavailable as exc:
            return f"database unreachable: {exc}"

    def reason(self) -> str | None:
        """Why the worker is unhealthy, or None."""
        if self.draining:
            return "worker is draining (shutting down)"
        problems = dict(self.failing)  # asked once: its checks are evaluated each time
        if problems:
            return "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        return self.check_database()

    def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) in the shape DESIGN.md fixes."""
        reason = self.reason()
        body: dict[str, Any] = {
            "status": "healthy" if reason is None else "unhealthy",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
            "service": "poel-worker",
            "environment": self.settings.env,
        }
        if reason is not None:
            body["reason"] = redact_dsn(reason)
        return (200 if reason is None else 503), body

    def close(self) -> None:
        self._conn.close()
