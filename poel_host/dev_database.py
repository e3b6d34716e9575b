"""Which database a command uses when ``DATABASE_URL`` is unset in development.

Production always names its database (``DATABASE_URL`` is required there). In development
without it, Poel uses the server at ``POEL_LOCAL_DATABASE_URL`` (by default
``postgresql://postgres@127.0.0.1:5432/postgres``) when one answers there, and otherwise
starts, or attaches to, the embedded PostgreSQL of ``POEL_DATA_DIR``
(:mod:`poel_host.embedded`), so a first run needs Python alone. ``POEL_EMBEDDED=never``
keeps to the local URL; ``always`` skips the look at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from poel_host.dsn import redact_dsn
from poel_host.settings import Settings


def uses_embedded(settings: Settings) -> bool:
    """Whether these settings call for the embedded server (asks the local URL)."""
    if settings.database_url_given or settings.env != "development":
        return False
    if settings.embedded != "auto":
        return settings.embedded == "always"
    from poel_host.database import ping

    return not ping(settings.local_database_url.get_secret_value())


@contextmanager
def database_for(settings: Settings, log: Any, *, announce: bool = False) -> Iterator[Settings]:
    """``settings`` with ``DATABASE_URL`` resolved, the embedded server kept running (and
    stopped afterwards if no other process uses it) for the duration of the block.

    ``announce`` logs where the data lives and how to connect at info level (``serve``);
    other commands say it only when they had to start the server.
    """
    if settings.database_url_given or settings.env != "development":
        yield settings
        return
    if not uses_embedded(settings):
        yield settings.model_copy(update={"database_url": settings.local_database_url})
        return
    from poel_host.embedded import EmbeddedError, EmbeddedServer, default_data_dir

    try:
        server = EmbeddedServer(settings.data_dir or default_data_dir())
        url = server.attach()
    except EmbeddedError as exc:
        raise EmbeddedError(
            f"{_why(settings)}; the embedded PostgreSQL cannot be used: {exc}"
        ) from None
    try:
        fields = {"data_dir": str(server.data_dir), "url": url, "psql": server.psql_command()}
        if server.started:
            log.info("embedded PostgreSQL started", **fields)
        elif announce:
            log.info("embedded PostgreSQL in use", **fields)
        yield settings.model_copy(update={"database_url": SecretStr(url)})
    finally:
        if server.detach():
            log.info("embedded PostgreSQL stopped", data_dir=str(server.data_dir))


def _why(settings: Settings) -> str:
    if settings.embedded == "always":
        return "DATABASE_URL is unset and POEL_EMBEDDED=always"
    local = redact_dsn(settings.local_database_url.get_secret_value())
    return f"DATABASE_URL is unset and no PostgreSQL answers at {local}"
