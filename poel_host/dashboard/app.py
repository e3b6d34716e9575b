"""The dashboard's routes: one function a page or action, over the store's dashboard queries.

Every page reads the database through indexes only (no sequential scan of the jobs table,
checked by ``tests/test_dashboard_explain.py``): lists are keyset-paginated on the primary
key, counts use the partial indexes of queued, running, finished and failed jobs. Bad input
(an unknown id, a bad filter, a missing or wrong token) gets a 4xx page saying what was
wrong; an unexpected error a 500 page without a traceback (logged instead).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlencode

import bottle

from poel_host.dashboard import auth
from poel_host.dashboard.views import clip, render
from poel_host.errors import DatabaseUnavailable, PoelError
from poel_host.jobs import JOB_STATES
from poel_host.settings import Settings, load_settings
from poel_host.store import Store

PAGE = 50  # jobs a page
WINDOW = 10_000  # jobs a filtered page looks at, at most (see dashboard_jobs in the SQL)
RUNNING_LIMIT = 500
CLIP = 2_000  # characters of a payload or an error shown before "show all"
ACTIONS = ("retry", "cancel", "delete")


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


class _Dashboard:
    def __init__(self, settings: Settings, store: Store, plugins: Any, log: Any) -> None:
        self.settings = settings
        self.store = store
        self.plugins = plugins
        self.log = log
        token = settings.dashboard_token
        self.token = token.get_secret_value() if token is not None else None
        app = self.app = bottle.Bottle()
        app.config["catchall"] = True
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/", self.overview),
            ("GET", "/jobs", self.jobs),
            ("GET", "/jobs/<job_id>", self.job),
            ("GET", "/running", self.running),
            ("GET", "/schedules", self.schedules),
            ("GET", "/workers", self.workers),
            ("GET", "/audit", self.audit),
            ("GET", "/login", self.login_form),
            ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("POST", "/jobs/<job_id>/<action>", self.act),
            ("POST", "/retry-failed", self.retry_failed),
        ]
        for method, path, view in routes:
            app.route(path, method, self._guarded(view))
        for code in (400, 403, 404, 405, 500):
            app.error(code)(self._error_page)

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

    def overview(self) -> str:
        groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
            lambda: {"queued": 0, "oldest_s": None, "running": 0, "succeeded": 0, "failed": 0}
        )
        for row in self.store.queue_depths(cap=10_000):
            group = groups[row["queue"], row["job_type"]]
            group["queued"], group["oldest_s"] = int(row["depth"]), row["oldest_s"]
        for row in self.store.running_counts():
            groups[row["queue"], row["job_type"]]["running"] = int(row["count"])
        minutes: dict[dt.datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for row in self.store.finished_last_hour():
            if row["state"] in ("succeeded", "failed"):
                groups[row["queue"], row["job_type"]][row["state"]] += int(row["count"])
            minutes[row["minute"]][row["state"]] += int(row["count"])
        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        chart = []
        for i in range(59, -1, -1):
            minute = now - dt.timedelta(minutes=i)
            counts = minutes.get(minute, {})
            chart.append((minute, counts.get("succeeded", 0), counts.get("failed", 0)))
        workers = self.store.list_workers()
        return self._page(
            "overview",
            title="Overview",
            groups=sorted(groups.items()),
            dead=sorted(self.store.failed_counts().items()),
            chart=chart,
            alive=sum(1 for w in workers if w["status"] != "gone"),
            gone=sum(1 for w in workers if w["status"] == "gone"),
        )

    def jobs(self) -> str:
        query = bottle.request.query
        state = query.getunicode("state") or None
        if state is not None and state not in JOB_STATES:
            _fail(400, f"unknown state {state!r}: one of {', '.join(JOB_STATES)}")
        before = _int(query.getunicode("before"), "before") if query.get("before") else 2**63 - 1
        filters = {
            "state": state,
            "job_type": query.getunicode("type") or None,
            "queue": query.getunicode("queue") or None,
            "error": query.getunicode("error") or None,
        }
        for name, value in filters.items():
            if value is not None and len(value) > 200:
                _fail(400, f"the {name} filter is too long (200 characters at most)")
        rows, next_before = self.store.browse_jobs(
            **filters, before=before, limit=PAGE, window=WINDOW
        )
        shown = {k if k != "job_type" else "type": v for k, v in filters.items() if v}
        more = None if next_before is None else "?" + urlencode({**shown, "before": next_before})
        return self._page(
            "jobs",
            title="Jobs",
            rows=rows,
            filters=filters,
            states=JOB_STATES,
            more=more,
            next_before=next_before,
            window=WINDOW if len(rows) < PAGE and state != "failed" else None,
        )

    def job(self, job_id: str) -> str:
        number = _int(job_id, "job id")
        row = self.store.get_job(number)
        if row is None:
            _fail(404, f"no job with id {number}")
        full = bottle.request.query.get("full") == "1"
        limit = None if full else CLIP
        payload = None
        if self.settings.dashboard_shows_payloads:
            payload = clip(json.dumps(row["payload"], indent=2, ensure_ascii=False), limit)
        errors = [
            {
                **error,
                "error": clip(str(error.get("error", "")), limit),
                "traceback": clip(error["traceback"], limit) if error.get("traceback") else None,
            }
            for error in reversed(row["errors"] or [])
        ]
        return self._page(
            "job",
            title=f"Job {number}",
            job=row,
            payload=payload,
            errors=errors,
            full=full,
        )

    def running(self) -> str:
        return self._page(
            "running", title="Running", rows=self.store.running_jobs(limit=RUNNING_LIMIT)
        )

    def schedules(self) -> str:
        from poel_host.schedules import next_slot

        slots = self.store.last_slots()
        now = dt.datetime.now(dt.timezone.utc)
        rows = [
            {
                "type": job.type,
                "schedule": job.schedule,
                "queue": job.queue,
                "last_slot": slots.get(job.type),
                "next_run": next_slot(job.schedule, now),
            }
            for job in sorted(self.plugins.jobs.values(), key=lambda j: j.type)
            if job.schedule
        ]
        return self._page("schedules", title="Schedules", rows=rows)

    def workers(self) -> str:
        return self._page("workers", title="Workers", rows=self.store.list_workers())

    def audit(self) -> str:
        return self._page("audit", title="Audit", rows=self.store.audit_log(limit=200))

    # Signing in -------------------------------------------------------------------------

    def login_form(self) -> str:
        if self.token is None:
            _fail(403, "the dashboard is read-only: set POEL_DASHBOARD_TOKEN to act on jobs")
        return self._page("login", title="Sign in")

    def login(self) -> str:
        if self.token is None:
            _fail(403, "the dashboard is read-only: set POEL_DASHBOARD_TOKEN to act on jobs")
        self._same_origin()
        form = bottle.request.forms
        actor = (form.getunicode("name") or "").strip()[:100]
        if not actor:
            _fail(400, "give your name: it is written beside each action in the audit")
        if not auth.token_ok(self.token, form.getunicode("token")):
            self.log.warning("dashboard sign-in refused", address=bottle.request.remote_addr)
            _fail(403, "wrong token")
        bottle.response.set_cookie(
            auth.COOKIE,
            auth.new_cookie(self.token, actor),
            path=bottle.request.script_name,
            httponly=True,
            samesite="strict",
            max_age=12 * 3600,
        )
        bottle.redirect(bottle.request.script_name or "/", 303)
        return ""

    def logout(self) -> str:
        bottle.response.delete_cookie(auth.COOKIE, path=bottle.request.script_name)
        bottle.redirect(bottle.request.script_name or "/", 303)
        return ""

    # Actions ----------------------------------------------------------------------------

    def act(self, job_id: str, action: str) -> str:
        session = self._authorised()
        number = _int(job_id, "job id")
        if action not in ACTIONS:
            _fail(404, f"no action {action!r}: one of {', '.join(ACTIONS)}")
        row = self.store.get_job(number)
        if row is None:
            _fail(404, f"no job with id {number}")
        if action == "retry":
            done = self.store.retry_job(number)
            wanted = "failed or cancelled"
        elif action == "cancel":
            done = self.store.cancel_job(number)
            wanted = "queued"
        else:
            done = self.store.delete_finished_job(number) is not None
            wanted = "finished (succeeded, failed or cancelled)"
        if not done:
            _fail(409, f"job {number} was not changed: it is {row['state']}, not {wanted}")
        self._audit(session, action, job_id=number, job_type=row["job_type"])
        where = "/jobs" if action == "delete" else f"/jobs/{number}"
        bottle.redirect(bottle.request.script_name.rstrip("/") + where, 303)
        return ""

    def retry_failed(self) -> str:
        session = self._authorised()
        job_type = bottle.request.forms.getunicode("job_type") or ""
        if not job_type:
            _fail(400, "say which job type's failed jobs to retry")
        ids = self.store.retry_failed_of_type(job_type)
        self._audit(session, "retry_failed_type", job_type=job_type, detail={"jobs": len(ids)})
        bottle.redirect(
            bottle.request.script_name.rstrip("/") + "/jobs?" + urlencode({"type": job_type}), 303
        )
        return ""

    def _authorised(self) -> auth.Session:
        """The session of a genuine, same-site request of a signed-in operator, or a 403."""
        if self.token is None:
            _fail(403, "the dashboard is read-only: set POEL_DASHBOARD_TOKEN to act on jobs")
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

    def _audit(self, session: auth.Session, action: str, **what: Any) -> None:
        self.store.audit(
            actor=session.actor, address=bottle.request.remote_addr, action=action, **what
        )
        self.log.info("dashboard action", actor=session.actor, action=action, **what)


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
