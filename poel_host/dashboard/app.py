"""The dashboard's routes: one function a page or action, over the store's dashboard queries.

Every page reads the database through indexes only (no sequential scan of the jobs table,
checked by ``tests/test_dashboard_explain.py``): lists are keyset-paginated on the primary
key, counts use the partial indexes of queued, running, finished and failed jobs. Bad input
(an unknown id, a bad filter, a missing or wrong token) gets a 4xx page saying what was
wrong; an unexpected error a 500 page without a traceback (logged instead).

The pages are :mod:`.pages` (the workflows' :mod:`.workflow_pages`), the actions
:mod:`.actions`, signing in and the gate that keeps strangers out :mod:`.signin`, what they
share :mod:`.base`; this module builds the application and maps the routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle

from poel_host.dashboard.actions import Actions
from poel_host.dashboard.pages import Pages
from poel_host.dashboard.workflow_pages import WorkflowPages
from poel_host.settings import Settings, load_settings
from poel_host.store import Store


def make_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    plugins: Any = None,
    log: Any = None,
) -> bottle.Bottle:
    """The dashboard as a WSGI application (settings from the environment by default)."""
    s = settings or load_settings()
    if store is None:
        from poel_host.database import make_pool

        pool = make_pool(
            s.dsn,
            name="dashboard",
            min_size=0,
            max_size=4,
            pooler=s.pooler,
            connect_timeout=s.connect_timeout_s,
        )
        store = Store(s.schema_name, pool)
    if plugins is None:
        from poel_host.plugins import load_plugins

        plugins = load_plugins(s.plugins_to_load, s.plugins_disabled)
    if log is None:
        from poel_host.logs import get_logger

        log = get_logger()
    return _Dashboard(s, store, plugins, log).app


class _Dashboard(Pages, WorkflowPages, Actions):
    """The dashboard: its pages and actions under one bottle application."""

    def __init__(self, settings: Settings, store: Store, plugins: Any, log: Any) -> None:
        super().__init__(settings, store, plugins, log)
        app = self.app = bottle.Bottle()
        app.config["catchall"] = True
        # Before any route is matched, so that unknown paths and wrong methods are behind
        # it too: a stranger learns nothing of what exists.
        app.add_hook("before_request", self._gate)
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/", self.overview),
            ("GET", "/jobs", self.jobs),
            ("GET", "/jobs/<job_id>", self.job),
            ("GET", "/workflows", self.workflows),
            ("GET", "/workflows/<workflow_id>", self.workflow),
            ("GET", "/running", self.running),
            ("GET", "/schedules", self.schedules),
            ("GET", "/steering", self.steering),
            ("GET", "/workers", self.workers),
            ("GET", "/audit", self.audit),
            ("GET", "/signin", self.signin_form),
            ("POST", "/signin", self.signin),
            ("POST", "/signout", self.signout),
            ("POST", "/jobs/<job_id>/<action>", self.act),
            ("POST", "/retry-failed", self.retry_failed),
            ("POST", "/pause", self.pause),
            ("POST", "/resume", self.resume),
            ("POST", "/steer", self.steer),
            ("POST", "/unsteer", self.unsteer),
        ]
        for method, path, view in routes:
            app.route(path, method, self._guarded(view))
        for code in (400, 403, 404, 405, 429, 500, 503):
            app.error(code)(self._error_page)
