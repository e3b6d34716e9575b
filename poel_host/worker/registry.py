"""This worker's row in the registry of live workers (``<schema>.workers``).

The row says who the worker is (host, pid, version, plugins and job types, queues) and what
it can run at once (greenlet slots, and the thread and process capacity when a loaded job
type uses them), for ``poel-host workers`` and the dashboard. Its heartbeat, written by the
lease keeper every third of ``POEL_LEASE_MS``, is also the lease of every job the worker
holds: one row written per interval, whatever the worker runs. It is written when
``serve`` starts, marked draining on SIGTERM and deleted on a clean shutdown. A worker that
dies leaves a row whose heartbeat stops: the rescuer of any live worker takes its jobs
back and marks it gone after the dead worker's lease, and deletes it after
``POEL_GONE_WORKERS_KEEP_S``. A worker found gone while it was only frozen registers again
at its next heartbeat.

**No claim before the row.** A running job whose owner is not in the registry is an orphan
to every rescuer, so the producer claims only once the row is written (``registered``),
registering first if it must.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from poel_host import __version__
from poel_host.plugins import Plugins
from poel_host.settings import Settings
from poel_host.store import Store


class Registration:
    """What this worker writes in its row; ``draining`` is read by the lease thread."""

    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        *,
        owner: str,
        executors: set[str],
    ) -> None:
        self.owner = owner
        self.draining = False  # set by the greenlet side, read by the lease thread
        # Whether the row is known written: set by register(), cleared by the lease
        # keeper when its heartbeat finds the row gone; read by the producer.
        self.registered = False
        self.row: dict[str, Any] = {
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "plugins": [
                {"name": p.name, "distribution": p.distribution, "version": p.version}
                for p in plugins.loaded
            ],
            "job_types": sorted(plugins.jobs),
            "queues": settings.queue_names,
            "concurrency": settings.worker_concurrency,
            "threads": settings.threads if "thread" in executors else None,
            "processes": settings.processes if "process" in executors else None,
            "stale_after_ms": settings.lease_ms,
        }

    def register(self, store: Store) -> None:
        """Write the whole row (at start-up, or again after it was cleaned up)."""
        store.register_worker({**self.row, "draining": self.draining})
        self.registered = True

    def drain(self, store: Store) -> None:
        self.draining = True
        store.set_worker_draining(self.owner)

    def unregister(self, store: Store) -> None:
        store.unregister_worker(self.owner)
