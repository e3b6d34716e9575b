"""``poel-host serve``: the worker and the HTTP app in one gevent process.

Signals: the first SIGTERM or SIGINT stops claiming and drains (running jobs get
``POEL_SHUTDOWN_TIMEOUT_MS`` to finish; the rest are handed back to the queue); a second
one exits at once (its jobs come back when their leases expire).
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Any

import gevent

from poel_host import migrations
from poel_host.autovacuum import check_autovacuum
from poel_host.database import connection_for
from poel_host.green import check_green
from poel_host.httpapp import make_app, start_server
from poel_host.job_steering import declared_rows
from poel_host.logs import get_logger
from poel_host.plugins import Plugins, load_plugins
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.watchdog import HubWatchdog
from poel_host.worker import Worker


def load_selected_plugins(settings: Settings, log: Any) -> Plugins:
    plugins = load_plugins(settings.plugins_to_load, settings.plugins_disabled)
    for failed in plugins.failed:
        log.error(
            "plugin failed to load",
            plugin=failed.name,
            distribution=failed.distribution,
            version=failed.version,
            error=failed.error,
        )
    return plugins


def prepare_schema(settings: Settings, plugins: Plugins, log: Any) -> None:
    """Migrate (POEL_AUTO_MIGRATE) or refuse to start on an out-of-date schema; then, on
    the same connection, warn if autovacuum cannot clean the jobs table."""
    with connection_for(settings, "migrate") as conn:
        if settings.should_auto_migrate:
            applied = migrations.migrate(
                conn,
                settings.schema_name,
                plugins.migrations(),
                lock_timeout_ms=settings.migration_lock_timeout_ms,
            )
            if applied:
                log.info("migrations applied", migrations=applied)
        else:
            migrations.check_up_to_date(conn, settings.schema_name, plugins.migrations())
        store = Store(settings.schema_name)
        store.declare_steering(declared_rows(plugins.jobs.values()), conn)
        check_autovacuum(store, conn, log)


def settle_memory() -> None:
    """Leave what start-up made (modules, plugins, settings: some 57,000 objects) out of
    every later garbage collection.

    CPython's full collections scan every object alive: while no-op jobs drained they ran
    several times a minute, 30-65 ms each, each a stall of claims, renewals and
    ``/health``. ``gc.freeze()`` is the standard library's way to keep such objects out;
    they are made once and live as long as serve does.
    """
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> int:
    log = get_logger()
    check_green()
    if settings.pooler_inferred:
        log.warning(
            "transaction pooler assumed: polling only",
            reason="DATABASE_URL has port 6543 (Supabase's transaction pooler) and "
            "POEL_POOLER is unset",
            pooler=settings.pooler,
            hint="set POEL_POOLER=none if this server allows LISTEN",
        )
    watchdog = HubWatchdog(settings.blocking_warn_ms / 1000, log=log)
    if settings.blocking_warn_ms:
        watchdog.start()
    plugins = load_selected_plugins(settings, log)
    prepare_schema(settings, plugins, log)
    if settings.supabase_url and settings.supabase_service_role_key:
        from poel_host.supabase_client import warm_up  # (it imports httpx)

        warm_up(log)
    worker = Worker(settings, plugins, log=log)
    if settings.blocking_warn_ms:
        worker.metrics.event_loop_blocks = watchdog.blocks_seen
    server = start_server(
        make_app(worker.health, plugins.describe, worker.metrics.render),
        settings.health_check_host,
        settings.health_check_port,
        log=log,
    )
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("signal received: draining", signal=signal.Signals(signum).name)
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    settle_memory()
    try:
        worker.run()
    finally:
        server.stop(timeout=2)
    return 0
