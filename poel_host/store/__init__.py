"""The store: the only code that runs SQL against Poel's tables.

One method per named block of ``sql/queries.sql``; callers (the queue client, the worker's
services, the CLI, health, migrations, the test kit) never see SQL or a cursor. A store
runs each statement through its *source* (a pool or one kept connection, both from
:mod:`poel_host.database`), or on the caller's connection when one is passed (an enqueue
inside the caller's transaction). Driver errors that mean the database could not be used
(``DB_ERRORS``) are translated here into :class:`~poel_host.errors.DatabaseUnavailable`,
so every service catches one exception and every message has the password masked.

The methods live in one module per caller: :mod:`.jobs` (enqueueing and the worker's job
path), :mod:`.workers` (the registry of workers), :mod:`.operators` (the CLI, the
dashboard and the test kit), :mod:`.sessions` (the dashboard's sign-ins), :mod:`.pauses`
(paused queues and types), :mod:`.steering` (steering set by hand), :mod:`.workflows`
(workflows and their steps),
:mod:`.migrations`, :mod:`.server` (the server's own settings and statistics about the
jobs table), :mod:`.history` (archiving finished jobs, retention); :mod:`.base` holds the
plumbing they share. :class:`Store` is all of them, so one store serves a worker or a
dashboard.
"""

from __future__ import annotations

from poel_host.store.base import DB_ERRORS, Conn, Source, StoreBase, claim_query, queries
from poel_host.store.history import HistoryStore
from poel_host.store.jobs import JobStore, OutcomeRow, ProgressRow
from poel_host.store.migrations import MigrationStore
from poel_host.store.operators import OperatorStore
from poel_host.store.pauses import PauseStore
from poel_host.store.server import ServerStore
from poel_host.store.sessions import SessionStore
from poel_host.store.steering import SteeringStore
from poel_host.store.workers import WorkerStore
from poel_host.store.workflows import WorkflowStore

__all__ = [
    "DB_ERRORS",
    "Conn",
    "HistoryStore",
    "JobStore",
    "MigrationStore",
    "OperatorStore",
    "OutcomeRow",
    "PauseStore",
    "ProgressRow",
    "ServerStore",
    "SessionStore",
    "Source",
    "SteeringStore",
    "Store",
    "StoreBase",
    "WorkerStore",
    "WorkflowStore",
    "claim_query",
    "queries",
]


class Store(
    JobStore,
    HistoryStore,
    WorkerStore,
    OperatorStore,
    PauseStore,
    SteeringStore,
    WorkflowStore,
    SessionStore,
    MigrationStore,
    ServerStore,
):
    """Poel's tables in one schema, reached through ``source``: every part of the store."""
