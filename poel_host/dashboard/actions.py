"""The dashboard's writable half: signing in with ``POEL_DASHBOARD_TOKEN`` and acting on
jobs (retry, cancel, delete; retry every failed job of a type). Each action is checked
against cross-site requests (Origin, CSRF token) and written to the audit log; without a
token every route here answers 403.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import bottle

from poel_host.dashboard import auth
from poel_host.dashboard.base import DashboardBase, _fail, _int

ACTIONS = ("retry", "cancel", "delete")


class Actions(DashboardBase):
    """Signing in and out, and the POST routes that change jobs."""

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
