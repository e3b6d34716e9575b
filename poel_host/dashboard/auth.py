"""Sessions of the dashboard's operators: the cookie, what the server keeps of it, the CSRF
token of a session, and where a sign-in may send the browser back to.

The cookie holds only a random session id (32 bytes, URL-safe): it says nothing and cannot
be forged or extended, because what counts is the server's row (:mod:`poel_host.store.
sessions`). That row holds a SHA-256 hash of the id (so reading the table opens no session)
and an HMAC of the id keyed with ``POEL_DASHBOARD_TOKEN``: a session made under another
token, or a row planted without knowing the token, does not match, and changing the token
ends every session at once. Every action is a POST whose form carries a CSRF token, an HMAC
of the session's id; a request from another site has neither the cookie (SameSite=Strict)
nor that token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "poel_dashboard"
_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what secrets.token_urlsafe(32) makes


@dataclass(frozen=True)
class Session:
    """A live session: its row's number, who signed in, and the cookie's id (kept out of
    reprs and logs: whoever holds it is signed in)."""

    number: int
    actor: str
    sid: str = field(repr=False)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def well_formed(cookie: str | None) -> bool:
    """Whether a cookie could be a session id at all (anything else never reaches SQL)."""
    return bool(cookie) and _ID.match(cookie or "") is not None


def id_hash(sid: str) -> bytes:
    """What the server stores and looks a session up by."""
    return hashlib.sha256(sid.encode()).digest()


def token_mac(token: str, sid: str) -> bytes:
    """Binds a session to the token it was made under."""
    return hmac.new(token.encode(), f"session:{sid}".encode(), hashlib.sha256).digest()


def token_mac_ok(token: str, sid: str, stored: bytes) -> bool:
    return hmac.compare_digest(token_mac(token, sid), bytes(stored))


def csrf_token(token: str, session: Session) -> str:
    return hmac.new(token.encode(), f"csrf:{session.sid}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(token: str, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(given or "", csrf_token(token, session))


def token_ok(token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest((given or "").encode(), token.encode())


def local_path(text: str | None) -> str | None:
    """``text`` if it is a path of this dashboard to go back to after signing in, else None.

    Only an absolute path with printable ASCII is taken: not ``//host`` or ``/\\host``
    (browsers read both as another site), not a URL with a scheme, not the sign-in page
    itself. So the ``next`` of a sign-in link cannot send anyone elsewhere.
    """
    if not text or len(text) > 2000 or not text.startswith("/"):
        return None
    if text.startswith(("//", "/\\")) or "\\" in text:
        return None
    if any(not 0x21 <= ord(char) <= 0x7E for char in text):
        return None
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or parts.path == "/signin":
        return None
    return text
