"""The worker's health, as ``GET /health`` reports it.

The database check uses its own connection, not the job pool, so it answers even when every
pooled connection is busy with long jobs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import gevent
import psycopg
from gevent.lock import Semaphore

from poel_host.database import connect
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import Settings, redact_dsn

CHECK_TIMEOUT_S = 3.0


class Health:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.draining = False
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = Semaphore()

    def check_database(self) -> str | None:
        """None when PostgreSQL answers a query, else the reason (no secrets)."""
        with self._lock:
            kept = self._conn is not None and not self._conn.closed
            try:
                with gevent.Timeout(CHECK_TIMEOUT_S):
                    try:
                        self._select_1()
                    except psycopg.OperationalError:
                        if not kept:
                            raise
                        # The connection kept from the last check was ended meanwhile
                        # (terminated, server restarted): that says nothing about now.
                        self._discard()
                        self._select_1()
                return None
            except gevent.Timeout:
                self._discard()
                return f"database did not answer within {CHECK_TIMEOUT_S:g}s"
            except DatabaseUnavailable as exc:
                self._discard()
                return f"database unreachable: {exc}"
            except psycopg.Error as exc:
                self._discard()
                return f"database unreachable: {redact_dsn(one_line(exc))}"

    def _select_1(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings.dsn, connect_timeout=2, application_name="poel-host:health"
            )
        self._conn.execute("SELECT 1")

    def _discard(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) in the shape DESIGN.md fixes."""
        reason = "worker is draining (shutting down)" if self.draining else self.check_database()
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
        with self._lock:
            self._discard()
