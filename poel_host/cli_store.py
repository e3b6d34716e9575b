"""The CLI's store: one connection of its own for a command, closed afterwards.

Apart from ``cli_commands`` so that a command module (``cli_workflows``) reads the
database as the others do without importing the module that dispatches to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from poel_host.settings import Settings

T = TypeVar("T")


def with_store(settings: Settings, work: Callable[[Any], T]) -> T:
    """``work(store)`` on one connection of the CLI's own, closed afterwards."""
    from poel_host.database import KeptConnection
    from poel_host.store import Store

    conn = KeptConnection(
        settings.dsn, name="cli", pooler=settings.pooler, connect_timeout=settings.connect_timeout_s
    )
    try:
        return work(Store(settings.schema_name, conn))
    finally:
        conn.close()
