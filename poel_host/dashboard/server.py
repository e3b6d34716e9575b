"""``poel-host dashboard``: the dashboard on its own port, in a gevent WSGI server.

It binds to loopback unless told otherwise (``--host``/``POEL_DASHBOARD_HOST``), like the
health app; SIGTERM or SIGINT stops it. Told to listen beyond loopback without
``POEL_DASHBOARD_TOKEN``, it warns: every page would then be open to the network.
"""

from __future__ import annotations

import ipaddress
import signal
from typing import Any

import gevent
import gevent.event

from poel_host.httpapp import start_server
from poel_host.settings import Settings


def serve_dashboard(settings: Settings, *, host: str, port: int, plugins: Any, log: Any) -> int:
    from poel_host import migrations
    from poel_host.dashboard.app import make_app
    from poel_host.database import connection_for

    # Pages on an out-of-date schema would fail one by one: say it once, at start.
    with connection_for(settings, "dashboard") as conn:
        migrations.check_up_to_date(conn, settings.schema_name, plugins.migrations())
    app = make_app(settings, plugins=plugins, log=log)
    server = start_server(
        app,
        host,
        port,
        log=log,
        what="the dashboard",
        hint="choose another --port (or POEL_DASHBOARD_PORT)",
        event="dashboard listening",
        actions="enabled" if settings.dashboard_token else "read-only",
        payloads="shown" if settings.dashboard_shows_payloads else "hidden",
    )
    if not settings.dashboard_token and not _loopback(host):
        log.warning(
            "dashboard open beyond loopback",
            host=host,
            hint="without POEL_DASHBOARD_TOKEN every page is open to whoever reaches it",
        )
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    stopping.wait()
    server.stop(timeout=2)
    log.info("dashboard stopped")
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
