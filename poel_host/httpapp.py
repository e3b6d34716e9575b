"""The HTTP app (bottle), served by gevent's WSGI server inside ``poel-host serve``.

Every endpoint is read-only: ``GET /health`` and ``GET /plugins`` (JSON), ``GET /metrics``
(Prometheus' text format, or OpenMetrics when the scraper asks for it). Answers never
contain secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle
from gevent.pywsgi import WSGIServer

from poel_host.errors import PoelError
from poel_host.health import Health


def make_app(
    health: Health,
    describe_plugins: Callable[[], dict[str, Any]],
    metrics: Callable[[str | None], tuple[bytes, str]] = lambda accept: (b"", "text/plain"),
) -> bottle.Bottle:
    app = bottle.Bottle()

    @app.get("/health")  # type: ignore[untyped-decorator]
    def get_health() -> dict[str, Any]:
        status, body = health.report()
        bottle.response.status = status
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    @app.get("/plugins")  # type: ignore[untyped-decorator]
    def get_plugins() -> dict[str, Any]:
        return describe_plugins()

    @app.get("/metrics")  # type: ignore[untyped-decorator]
    def get_metrics() -> bytes:
        body, content_type = metrics(bottle.request.get_header("Accept"))
        bottle.response.content_type = content_type
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    def error_body(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        import json

        return json.dumps({"error": error.status_line, "status": error.status_code})

    for code in (400, 404, 405, 500):
        app.error(code)(error_body)
    return app


def start_server(
    app: Any,
    host: str,
    port: int,
    *,
    log: Any,
    what: str = "HTTP",
    hint: str = "set HEALTH_CHECK_PORT (and HEALTH_CHECK_HOST) to a free address",
    event: str = "http listening",
    **fields: Any,
) -> WSGIServer:
    """Start serving ``app`` (the health app, or the dashboard) in the background; returns
    the server (``server.server_port``). A busy address is one line naming ``hint``."""
    server = WSGIServer((host, port), app, log=None, error_log=_ErrorLog(log))
    try:
        server.start()
    except OSError as exc:
        raise PoelError(
            f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}; {hint}"
        ) from None
    log.info(event, host=host, port=server.server_port, **fields)
    return server


class _ErrorLog:
    """gevent's error_log interface, forwarded to structlog."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def write(self, text: str) -> None:
        if text.strip():
            self.log.error("http error", detail=text.strip()[:2000])

    def flush(self) -> None:
        pass
