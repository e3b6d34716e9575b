"""The dashboard's plumbing, shared by its pages (:mod:`.pages`), its actions
(:mod:`.actions`) and signing in (:mod:`.signin`): what every answer gets (security
headers, the error a database outage or a refused change becomes), rendering a page with
the session and CSRF token, the error pages, redirects, finding the request's session on
the server, who is asking, and the checks of numbers in a URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import bottle

from poel_host.dashboard import auth, client
from poel_host.dashboard.views import render
from poel_host.errors import DatabaseUnavailable, PoelError
from poel_host.settings import Settings
from poel_host.store import Store


class DashboardBase:
    """One dashboard's settings, store, plugins and log, and its plumbing."""

    def __init__(self, settings: Settings, store: Store, plugins: Any, log: Any) -> None:
        self.settings = settings
        self.store = store
        self.plugins = plugins
        self.log = log
        token = settings.dashboard_token
        self.token = token.get_secret_value() if token is not None else None
        self.proxies = settings.trusted_proxies

    # Plumbing ---------------------------------------------------------------------------

    def _guarded(self, view: Callable[..., str]) -> Callable[..., str]:
        """A route that answers a database outage or a refused change with its page."""

        def guarded(**kwargs: Any) -> str:
            try:
                return view(**kwargs)
            except bottle.HTTPResponse:
                raise
            except DatabaseUnavailable as exc:
                bottle.response.status = 503
                return self._page("error", title="Database unavailable", message=str(exc))
            except PoelError as exc:
                bottle.response.status = 409
                return self._page("error", title="Not done", message=str(exc))

        return guarded

    def _page(self, name: str, **values: Any) -> str:
        session = self._session()
        return render(
            name,
            root=bottle.request.script_name.rstrip("/"),
            session=session,
            csrf=auth.csrf_token(self.token, session) if self.token and session else "",
            writable=self.token is not None,
            refresh=_refresh(),
            **values,
        )

    def _see_other(self, path: str) -> NoReturn:
        """Send the browser to ``path`` of this dashboard (a 303, cookies set so far kept).

        The Location is relative: it is not built from the request's Host or
        X-Forwarded-Host, which a client writes."""
        answer = bottle.response.copy(cls=bottle.HTTPResponse)
        answer.status = 303
        answer.body = ""
        answer.set_header("Location", bottle.request.script_name.rstrip("/") + path)
        raise answer

    def _error_page(self, error: bottle.HTTPError) -> str:
        if error.status_code >= 500 and error.exception is not None:
            self.log.error(
                "dashboard error",
                path=bottle.request.path,
                error=repr(error.exception),
                traceback=error.traceback,
            )
            message = "Something went wrong on the server; it has been logged."
        else:
            message = str(error.body)
        _secure_headers()
        bottle.response.content_type = "text/html; charset=utf-8"
        # the gate's finding, if it looked: an error page makes no query of its own
        session = bottle.request.environ.get("poel.session")
        return render(
            "error",
            root=bottle.request.script_name.rstrip("/"),
            session=session,
            csrf=auth.csrf_token(self.token, session) if self.token and session else "",
            writable=self.token is not None,
            refresh=None,
            title=error.status_line,
            message=message,
        )

    def _session(self) -> auth.Session | None:
        """The request's live session, looked up on the server once a request."""
        if self.token is None:
            return None
        environ = bottle.request.environ
        if "poel.session" not in environ:
            environ["poel.session"] = self._find_session(bottle.request.get_cookie(auth.COOKIE))
        session: auth.Session | None = environ["poel.session"]
        return session

    def _find_session(self, cookie: str | None) -> auth.Session | None:
        if self.token is None or cookie is None or not auth.well_formed(cookie):
            return None
        row = self.store.find_session(auth.id_hash(cookie))
        if row is None or not auth.token_mac_ok(self.token, cookie, row["token_mac"]):
            return None  # none, expired, signed out, or made under another token
        return auth.Session(int(row["id"]), row["actor"], cookie)

    def _address(self) -> str:
        return client.address(bottle.request.environ, self.proxies)

    def _https(self) -> bool:
        if self.settings.dashboard_secure_cookies == "always":
            return True
        return client.https(bottle.request.environ, self.proxies)


def _secure_headers() -> None:
    """What every answer carries: never cached (pages show jobs' errors and payloads), never
    framed, no script, forms posted only here."""
    bottle.response.set_header("Cache-Control", "no-store")
    bottle.response.set_header("X-Frame-Options", "DENY")
    bottle.response.set_header("X-Content-Type-Options", "nosniff")
    bottle.response.set_header("Referrer-Policy", "same-origin")
    bottle.response.set_header(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'",
    )


def _int(text: str | None, what: str) -> int:
    try:
        value = int(text or "")
    except ValueError:
        _fail(400, f"{what} must be a number, got {text!r}")
    if not 0 < value < 2**63:
        _fail(400, f"{what} out of range: {value}")
    return value


def _refresh() -> int | None:
    """``?refresh=N``: the page reloads itself every N seconds (2-300)."""
    text = bottle.request.query.get("refresh")
    if not text or not text.isdigit():
        return None
    return min(300, max(2, int(text)))


def _fail(status: int, message: str) -> NoReturn:
    """Answer ``status`` with an error page saying ``message``."""
    raise bottle.HTTPError(status, message)
