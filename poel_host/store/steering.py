"""The store's statements for steering by hand: setting and removing a queue's or a job
type's limits (``poel.steer()``, ``poel.unsteer()``, migration 0019) and listing every
steering row with what its gates hold now (the queue client, the CLI, the dashboard).
The claim reads the steering table itself (``claim_steered``, migration 0020), and a
serve writes its Jobs' rows with ``declare_steering`` (:mod:`.jobs`).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from poel_host.errors import InvalidSteering
from poel_host.store.base import Conn, StoreBase


class SteeringStore(StoreBase):
    """Steered queues and job types."""

    def steer(self, params: dict[str, Any], connection: Conn | None = None) -> None:
        """Set (or replace whole) the operator's steering row ``params`` describes: the
        arguments of ``poel.steer()``, checked (see :func:`poel_host.steering.checked`)."""
        values = dict(params)
        if values.get("key_weights") is not None:
            values["key_weights"] = json.dumps(values["key_weights"])
        try:
            self._execute("steer", values, connection)
        except (psycopg.errors.CheckViolation, psycopg.errors.NumericValueOutOfRange) as exc:
            # The Python checks come first; this is a value that slipped past them.
            what = exc.diag.constraint_name or exc.diag.message_primary
            raise InvalidSteering(
                f"cannot steer {params['kind']} {str(params['name'])[:60]!r}: {what}"
            ) from None

    def unsteer(self, kind: str, name: str, connection: Conn | None = None) -> bool:
        """Remove ``name``'s steering: True if it was steered, False if it was not."""
        row = self._one("unsteer", {"kind": kind, "name": name}, connection)
        return bool(row and row["unsteered"])

    def list_steering(self, connection: Conn | None = None) -> list[dict[str, Any]]:
        """Every steering row, by kind and name, with its running slots and its window's
        starts now (see ``list_steering`` in ``queries.sql``)."""
        return self._all("list_steering", None, connection)
