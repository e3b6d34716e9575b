"""Fixtures for the chaos suite: figures collected across tests, and killing a worker at a
moment it is running jobs. (The test database's name and cutting its connections,
``database_name`` and ``cut``, are in tests/conftest.py.)

Figures (jobs, kills, duplicates, recovery times...) are printed by each test (``-s``
shows them) and written together to ``$POEL_CHAOS_FIGURES`` (default
``/tmp/poel-chaos-figures.json``) at the end of the session.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

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


def _statements_running(conn: Any, pid: int) -> int:
    """Statements the server is still running for a process's connections (found by their
    client ports: the chaos suite reaches PostgreSQL over TCP)."""
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr]
    return conn.execute(  # type: ignore[no-any-return]
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE client_port = ANY(%s) AND state = 'active' AND pid <> pg_backend_pid()",
        [ports],
    ).fetchone()["n"]


@pytest.fixture
def kill_mid_job(poel_conn: Any, wait_for: Callable[..., Any]) -> Callable[..., None]:
    """``kill_mid_job(worker, running)``: SIGKILL ``worker`` at a moment ``running()`` says
    it holds a job whose handler has started.

    Checking and then killing races the worker: between the two it may finish what it held
    (20 ms jobs; a worker between two claims holds nothing) or commit a claim the check did
    not see. So it is frozen first (SIGSTOP), the statements it had sent are let finish
    on the server, and only then is it checked; if it holds nothing started it goes on
    (SIGCONT) and is tried again. Killed frozen, what the database says it held afterwards
    is exactly what it held when it died.
    """

    def kill(worker: Any, running: Callable[[], object]) -> None:
        def frozen_mid_job() -> bool:
            worker.signal(signal.SIGSTOP)
            wait_for(
                lambda: _statements_running(poel_conn, worker.pid) == 0,
                timeout=10,
                what="the frozen worker's statements done",
            )
            if running():
                return True
            worker.signal(signal.SIGCONT)
            return False

        wait_for(frozen_mid_job, timeout=30, what="the worker frozen while running a job")
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(timeout=10)

    return kill
