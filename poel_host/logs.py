"""Structured logging: one JSON object a line on stderr.

Every line carries ``level``, ``ts``, ``msg``, ``service`` and ``environment``; a job's
logger adds ``jobId``, ``jobType`` and ``attempt``. Events use a small stable vocabulary
(``job started``, ``job succeeded``, ``job retry scheduled``, ...) that operators can match.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

SERVICE = "poel-worker"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(*, environment: str, log_format: str = "json", level: str = "info") -> None:
    """Configure structlog for the whole process (called once by the CLI)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_service(environment),
        structlog.processors.format_exc_info,
    ]
    if log_format == "console":
        processors.append(structlog.dev.ConsoleRenderer(event_key="msg"))
    else:
        processors += [
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(),
        ]
    _route_stdlib_logging(processors[:-1], processors[-1], _LEVELS[level])
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def forward_logging(send: Any, *, level: str = "info") -> None:
    """Configure structlog and the standard library's logging in a child process of the
    process executor: each event goes to ``send`` (as a dict, on the channel its results
    take) and its serve logs it, so a job's lines come out in serve's stream and format,
    in order with its outcome, and a test kit capturing serve's logs sees them too."""

    def forward(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        send(event)
        raise structlog.DropEvent

    handler = _Forward(send)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO))
    logging.getLogger("psycopg.pool").setLevel(max(_LEVELS[level], logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            forward,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _Forward(logging.Handler):
    """Libraries' standard-library logs in a child process, sent to serve on the channel
    like structlog's events: the child's stderr then carries only what it prints, which
    serve logs as the child's output and never passes on as lines of its own."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = {
                "event": record.getMessage(),
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            self.send(event)
        except Exception:  # noqa: BLE001 - as logging.Handler does: report it on stderr
            self.handleError(record)


def _route_stdlib_logging(pre: list[Any], renderer: Any, level: int) -> None:
    """Send libraries' standard-library logs (psycopg_pool, gevent) through the same
    renderer, so every line on stderr is one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("psycopg.pool").setLevel(max(level, logging.WARNING))
    # ctx.supabase's httpx logs every request at info: a line per request of every job.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


def _add_service(environment: str) -> Any:
    def add(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", SERVICE)
        event.setdefault("environment", environment)
        return event

    return add


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context."""
    return structlog.get_logger().bind(**bound)
