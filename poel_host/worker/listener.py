"""Waking the producer when jobs are inserted: LISTEN, or polling alone; and hearing
that a running job was cancelled (``poel_cancel``, see ``worker/cancels.py``).

The jobs table's trigger sends one ``NOTIFY poel_jobs`` per inserting statement, with the
schema's name as payload. The listener keeps a connection LISTENing (re-established when
it drops, waking the producer since notifications may have been missed meanwhile). Behind
a transaction pooler LISTEN cannot work (``POEL_POOLER=transaction``): the producer polls
every ``POEL_POLL_INTERVAL_MS``, as it also does when the listener is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from poel_host.backoff import pause
from poel_host.database import Connection, connect
from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.settings import Settings
from poel_host.store import DB_ERRORS, Store
from poel_host.worker.supervisor import Service

NOTIFY_CHANNEL = "poel_jobs"  # as in sql/queries.sql (listen) and the jobs table's trigger
CANCEL_CHANNEL = "poel_cancel"  # as in sql/queries.sql (listen_cancel, cancel_job)
KEEPALIVE_S = 5.0  # a LISTEN connection can die silently: ping it when nothing came


class Listener(Service):
    name = "listener"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        wake: Callable[[], None],
        log: Any,
        cancel: Callable[[int], object] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.wake = wake
        self.cancel = cancel  # a job id asked to stop (cancels.request)
        self.log = log

    def run(self) -> None:
        if self.settings.pooler != "none":
            self.log.info("LISTEN disabled (POEL_POOLER=transaction): polling for new jobs")
            return
        failures = 0
        while True:
            conn: Connection | None = None
            try:
                conn = connect(
                    self.settings.dsn,
                    name="listen",
                    connect_timeout=self.settings.connect_timeout_s,
                )
                self.store.listen(conn)
                if failures:
                    self.log.info("listening again for new jobs")
                failures = 0
                self.wake()  # notifications may have been missed while disconnected
                self._listen(conn)
            except DatabaseUnavailable as exc:
                failures += 1
                self.log.warning(
                    "listen connection lost; polling until it is back",
                    error=one_line(exc),
                    retry_in=pause(failures),
                )
                gevent.sleep(pause(failures))
            finally:
                if conn is not None:
                    conn.close()

    def _listen(self, conn: Connection) -> None:
        schema = self.settings.schema_name
        while True:
            try:
                for notify in conn.notifies(timeout=KEEPALIVE_S):
                    if notify.channel == CANCEL_CHANNEL:
                        self._cancelled(notify.payload, schema)
                    elif notify.payload == schema:
                        self.wake()
            except DB_ERRORS as exc:  # notifies() reads the socket itself, not through the store
                raise DatabaseUnavailable(f"listen connection lost: {one_line(exc)}") from exc
            self.store.ping(conn)
            self.passed()

    def _cancelled(self, payload: str, schema: str) -> None:
        """``"<schema> <job id>"``: a job of this schema asked to stop (cancel_job)."""
        named, _, job_id = payload.rpartition(" ")
        if named == schema and job_id.isdigit() and self.cancel is not None:
            self.cancel(int(job_id))
