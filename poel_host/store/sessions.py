"""The store's statements for the dashboard's sign-ins: its server-side sessions (started,
looked up, revoked) and the count of sign-in attempts that limits guessing the token.

Kept in the database rather than in the dashboard's memory so that a sign-out or the limit
holds across every dashboard process and survives a restart. The store sees only hashes
and MACs of a session's id, never the id itself (see :mod:`poel_host.dashboard.auth`).
"""

from __future__ import annotations

from typing import Any

from poel_host.store.base import StoreBase


class SessionStore(StoreBase):
    """The dashboard's sessions and sign-in attempts."""

    def start_session(
        self, *, id_hash: bytes, token_mac: bytes, actor: str, address: str, lifetime_s: float
    ) -> dict[str, Any]:
        """A new session ending ``lifetime_s`` from now: ``{id, issued_at, expires_at}``."""
        params = {
            "id_hash": id_hash,
            "token_mac": token_mac,
            "actor": actor,
            "address": address,
            "lifetime_s": lifetime_s,
        }
        row = self._one("dashboard_session_start", params)
        assert row is not None
        return row

    def find_session(self, id_hash: bytes) -> dict[str, Any] | None:
        """The live (unexpired, unrevoked) session with this hashed id, or None."""
        return self._one("dashboard_session", {"id_hash": id_hash})

    def end_session(self, id_hash: bytes) -> bool:
        """Revoke a session; False if it was not live."""
        return self._one("dashboard_session_end", {"id_hash": id_hash}) is not None

    def count_signin_attempt(self, address: str, *, window_s: int) -> tuple[int, int]:
        """Count one sign-in attempt from ``address``: the attempts in its current window
        (this one included) and the seconds until that window ends."""
        row = self._one("dashboard_signin_attempt", {"address": address, "window_s": window_s})
        assert row is not None
        return int(row["attempts"]), max(1, int(row["retry_after_s"]))

    def prune_sessions(self) -> None:
        """Forget sessions a day past their end and old attempt counts."""
        self._execute("dashboard_sessions_prune")
