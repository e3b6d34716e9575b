"""Signing in with the dashboard token, and checking each action against forged requests.

The token (``POEL_DASHBOARD_TOKEN``) is asked for once, on the sign-in page, with the
operator's name for the audit trail. The dashboard then sets a session cookie: the name and
a random nonce, signed with an HMAC of the token (so it needs no server-side state and
stops working when the token changes), ``HttpOnly`` and ``SameSite=Strict``. Every action
is a POST whose form carries a CSRF token derived from the session's nonce; a request from
another site has neither the cookie (SameSite) nor the CSRF token, and a request whose
``Origin`` names another host is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

COOKIE = "poel_dashboard"


@dataclass(frozen=True)
class Session:
    actor: str
    nonce: str


def _sign(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def new_cookie(token: str, actor: str) -> str:
    name = base64.urlsafe_b64encode(actor.encode()).decode()
    nonce = secrets.token_hex(16)
    return f"{name}.{nonce}.{_sign(token, f'session:{name}.{nonce}')}"


def read_cookie(token: str, cookie: str | None) -> Session | None:
    """The session a cookie names, or None if it is missing, malformed or forged."""
    if not cookie or cookie.count(".") != 2:
        return None
    name, nonce, signature = cookie.split(".")
    if not hmac.compare_digest(signature, _sign(token, f"session:{name}.{nonce}")):
        return None
    try:
        actor = base64.urlsafe_b64decode(name.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return Session(actor, nonce)


def csrf_token(token: str, session: Session) -> str:
    return _sign(token, f"csrf:{session.nonce}")


def csrf_ok(token: str, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(given or "", csrf_token(token, session))


def token_ok(token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest((given or "").encode(), token.encode())
