"""Fixtures for the chaos suite: figures collected across tests. (The test database's name
and cutting its connections, ``database_name`` and ``cut``, are in tests/conftest.py.)

Figures (jobs, kills, duplicates, recovery times...) are printed by each test (``-s``
shows them) and written together to ``$POEL_CHAOS_FIGURES`` (default
``/tmp/poel-chaos-figures.json``) at the end of the session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
