"""The dashboard's plumbing, shared by its pages (:mod:`.pages`) and its actions
(:mod:`.actions`): what every answer gets (security headers, the error a database outage
or a refused change becomes), rendering a page with the session and CSRF token, the
error pages, reading the session cookie, and the checks of numbers in a URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import bottle

from poel_host.dashboard import auth
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

    # Plumbing ---------------------------------------------------------------------------

    def _guarded(self, view: Callable[..., str]) -> Callable[..., str]:
        def guarded(**kwargs: Any) -> str:
            bottle.response.set_header("Cache-Control", "no-store")
            bottle.response.set_header("X-Frame-Options", "DENY")
            bottle.response.set_header("X-Content-Type-Options", "nosniff")
            bottle.response.set_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                "form-action 'self'; frame-ancestors 'none'",
            )
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

    def _error_page(self, error: bottle.HTTPError) -> str:
        if error.status_code >= 500:
            self.log.error(
                "dashboard error",
                path=bottle.request.path,
                error=repr(error.exception),
                traceback=error.traceback,
            )
            message = "Something went wrong on the server; it has been logged."
        else:
            message = str(error.body)
        bottle.response.content_type = "text/html; charset=utf-8"
        return render(
            "error",
            root=bottle.request.script_name.rstrip("/"),
            session=None,
            csrf="",
            writable=False,
            refresh=None,
            title=error.status_line,
            message=message,
        )

    def _session(self) -> auth.Session | None:
        if self.token is None:
            return None
        return auth.read_cookie(self.token, bottle.request.get_cookie(auth.COOKIE))

    # Pages ------------------------------------------------------------------------------


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
