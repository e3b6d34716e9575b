"""Fixtures for the chaos suite: figures collected across tests, the test database's name,
and cutting that database's connections.

Figures (jobs, kills, duplicates, recovery times...) are printed by each test (``-s``
shows them) and written together to ``$POEL_CHAOS_FIGURES`` (default
``/tmp/poel-chaos-figures.json``) at the end of the session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from psycopg import sql

from poel_host.database import connection
from poel_host.testing import server_dsn

FIGURES_PATH = Path(os.environ.get("POEL_CHAOS_FIGURES", "/tmp/poel-chaos-figures.json"))


@pytest.fixture(scope="session")
def _all_figures() -> Iterator[dict[str, Any]]:
    collected: dict[str, Any] = {}
    yield collected
    if collected:
        FIGURES_PATH.write_text(json.dumps(collected, indent=2, sort_keys=True) + "\n")
        print(f"\nchaos figures written to {FIGURES_PATH}")


@pytest.fixture
def figures(_all_figures: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[dict]:
    """A dict for this test's figures: printed after the test and saved for the session."""
    mine: dict[str, Any] = {}
    yield mine
    if mine:
        _all_figures[request.node.name] = mine
        print(f"\nFIGURES {request.node.name}: {json.dumps(mine, sort_keys=True)}")


@pytest.fixture
def database_name(poel_dsn: str) -> Iterator[str]:
    """The test database's name; it is opened to connections again at teardown."""
    name = urlsplit(poel_dsn).path.lstrip("/")
    yield name
    set_connections(name, allowed=True)


def terminate_backends(database: str, *, keep: Iterable[int] = ()) -> int:
    """End every connection to ``database`` (and only that database) but our own and the
    backends in ``keep``; return how many were ended."""
    with connection(server_dsn()) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> ALL(%s)",
            [database, list(keep)],
        ).fetchall()
    return sum(1 for r in rows if r["ended"])


def set_connections(database: str, *, allowed: bool) -> None:
    """Open or close ``database`` to new connections; closing also ends the current ones."""
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.SQL("true" if allowed else "false")
            )
        )
    if not allowed:
        terminate_backends(database)


@pytest.fixture
def cut() -> Callable[..., Any]:
    """``cut.terminate(db)`` ends the database's connections; ``cut.allow(db, bool)``
    opens or closes it to new ones."""

    class Cut:
        terminate = staticmethod(terminate_backends)
        allow = staticmethod(lambda database, allowed: set_connections(database, allowed=allowed))

    return Cut()
