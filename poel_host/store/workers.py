"""The store's registry of workers: each worker's row (written at start, beaten by its
heartbeat, marked draining, removed), the rescuer's expiry of stopped workers, and the
queue depths a worker reports. Read by ``poel-host workers`` and the dashboard too.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from poel_host.store.base import StoreBase


class WorkerStore(StoreBase):
    """The registry of workers and the depths of the queues."""

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
