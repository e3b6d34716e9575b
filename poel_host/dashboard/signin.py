"""Signing in and out, and the gate in front of everything else.

With ``POEL_DASHBOARD_TOKEN`` set, the dashboard shows nothing to a stranger: before any
route (a page, an action, an unknown path, any asset) the gate looks up the request's
session on the server, and without a live one a ``GET`` is sent to the sign-in page (303,
with ``next`` the local path asked for) and anything else refused (403). Only the sign-in
page itself is open. Signing in is limited per address (:data:`ATTEMPTS` a
:data:`WINDOW_S`, counted in the database so the limit holds across dashboard processes
and restarts), checked before the token so the limit cannot be used to test tokens; each
sign-in and sign-out is written to the audit log with the name and address.

Without a token there is no gate and no sign-in: the dashboard is read-only, bound to
loopback by default, and each page says so.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import bottle

from poel_host.dashboard import auth, client
from poel_host.dashboard.base import DashboardBase, _fail, _secure_headers
from poel_host.errors import DatabaseUnavailable

ATTEMPTS = 5  # sign-in attempts an address (an IPv6 /64) may make a window
WINDOW_S = 60
READ_ONLY = "the dashboard is read-only: set POEL_DASHBOARD_TOKEN to act on jobs"


class SignIn(DashboardBase):
    """The gate, the sign-in page, signing in and out."""

    def _gate(self) -> None:
        """Run before every route: let a signed-in operator through, send a stranger to
        sign in."""
        _secure_headers()
        if self.token is None or bottle.request.path == "/signin":
            return
        try:
            session = self._session()
        except DatabaseUnavailable as exc:
            raise bottle.HTTPError(503, str(exc)) from None
        if session is not None:
            return
        if bottle.request.get_cookie(auth.COOKIE) is not None:  # expired, revoked, forged
            bottle.response.delete_cookie(auth.COOKIE, path=self._cookie_path())
        if bottle.request.method not in ("GET", "HEAD"):
            _fail(403, "sign in with the dashboard token first")
        wanted = quote(bottle.request.path)
        if bottle.request.query_string:
            wanted += "?" + bottle.request.query_string
        self._see_other("/signin?" + urlencode({"next": auth.local_path(wanted) or "/"}))

    def signin_form(self) -> str:
        if self.token is None:
            _fail(403, READ_ONLY)
        return self._page(
            "signin",
            title="Sign in",
            next=auth.local_path(bottle.request.query.get("next")),
            hours=f"{self.settings.dashboard_session_hours:g}",
        )

    def signin(self) -> str:
        if self.token is None:
            _fail(403, READ_ONLY)
        self._same_origin()
        address = self._address()
        attempts, retry_after = self.store.count_signin_attempt(
            client.limit_key(address), window_s=WINDOW_S
        )
        if attempts > ATTEMPTS:
            self.log.warning("dashboard sign-in limited", address=address, attempts=attempts)
            raise bottle.HTTPError(
                429,
                f"too many sign-in attempts from your address: try again in {retry_after} s",
                **{"Retry-After": str(retry_after)},
            )
        form = bottle.request.forms
        actor = " ".join((form.getunicode("name") or "").split())[:100]
        if not actor:
            _fail(400, "give your name: it is written beside each action in the audit")
        if not auth.token_ok(self.token, form.getunicode("token")):
            self.log.warning("dashboard sign-in refused", address=address)
            _fail(403, "wrong token")
        self._end_session()  # a sign-in over another session replaces it
        sid = auth.new_session_id()
        lifetime_s = self.settings.dashboard_session_hours * 3600
        self.store.start_session(
            id_hash=auth.id_hash(sid),
            token_mac=auth.token_mac(self.token, sid),
            actor=actor,
            address=address,
            lifetime_s=lifetime_s,
        )
        self.store.prune_sessions()
        self.store.audit(actor=actor, address=address, action="sign_in")
        self.log.info("dashboard sign-in", actor=actor, address=address)
        bottle.response.set_cookie(
            auth.COOKIE,
            sid,
            path=self._cookie_path(),
            httponly=True,
            samesite="strict",
            secure=self._https(),
            max_age=int(lifetime_s),  # the browser's copy; the server's expiry is what counts
        )
        self._see_other(auth.local_path(form.getunicode("next")) or "/")

    def signout(self) -> str:
        session = self._authorised()
        self._end_session()
        address = self._address()
        self.store.audit(actor=session.actor, address=address, action="sign_out")
        self.log.info("dashboard sign-out", actor=session.actor, address=address)
        bottle.response.delete_cookie(auth.COOKIE, path=self._cookie_path())
        self._see_other("/signin")

    def _end_session(self) -> None:
        """Revoke the request's session on the server, if it names one."""
        cookie = bottle.request.get_cookie(auth.COOKIE)
        if auth.well_formed(cookie):
            assert cookie is not None
            self.store.end_session(auth.id_hash(cookie))

    def _cookie_path(self) -> str:
        return bottle.request.script_name or "/"

    def _authorised(self) -> auth.Session:
        """The session of a genuine, same-site request of a signed-in operator, or a 403."""
        if self.token is None:
            _fail(403, READ_ONLY)
        self._same_origin()
        session = self._session()
        if session is None:
            _fail(403, "sign in with the dashboard token first")
        assert session is not None and self.token is not None
        if not auth.csrf_ok(self.token, session, bottle.request.forms.getunicode("csrf")):
            _fail(403, "this request did not come from the dashboard's own form")
        return session

    def _same_origin(self) -> None:
        origin = bottle.request.get_header("Origin")
        if origin and origin != "null":
            host = origin.split("://", 1)[-1]
            if host != bottle.request.get_header("Host"):
                _fail(403, "a request from another site")
