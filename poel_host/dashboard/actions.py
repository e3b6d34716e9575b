"""The dashboard's writable half: acting on jobs (retry, cancel, delete; retry every failed
job of a type), pausing, resuming and steering a queue or a job type, for an operator signed in
with ``POEL_DASHBOARD_TOKEN`` (:mod:`.signin`). Each action is checked against cross-site
requests (Origin, CSRF token) and written to the audit log with the session's name and the
request's address; without a token every route here answers 403.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import bottle

from poel_host.dashboard import auth
from poel_host.dashboard.base import _fail, _int
from poel_host.dashboard.signin import SignIn
from poel_host.errors import InvalidName, InvalidSteering
from poel_host.pauses import MAX_REASON_CHARS, check_name, check_note, describe

ACTIONS = ("retry", "cancel", "delete")


class Actions(SignIn):
    """The POST routes that change jobs."""

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
            done = self.store.cancel_job(number) is not None
            wanted = "queued or running"
        else:
            done = self.store.delete_finished_job(number) is not None
            wanted = "finished (succeeded, failed or cancelled)"
        if not done:
            _fail(409, f"job {number} was not changed: it is {row['state']}, not {wanted}")
        self._audit(session, action, job_id=number, job_type=row["job_type"])
        self._see_other("/jobs" if action == "delete" else f"/jobs/{number}")

    def retry_failed(self) -> str:
        session = self._authorised()
        job_type = bottle.request.forms.getunicode("job_type") or ""
        if not job_type:
            _fail(400, "say which job type's failed jobs to retry")
        ids = self.store.retry_failed_of_type(job_type)
        self._audit(session, "retry_failed_type", job_type=job_type, detail={"jobs": len(ids)})
        self._see_other("/jobs?" + urlencode({"type": job_type}))

    def pause(self) -> str:
        """Pause a queue or a job type for every worker, in the signed-in operator's name."""
        session = self._authorised()
        kind, name = self._pause_target()
        reason = bottle.request.forms.getunicode("reason") or None
        try:
            check_note("reason", reason, MAX_REASON_CHARS)
        except InvalidName as exc:
            _fail(400, str(exc))
        paused = self.store.pause(kind, name, reason=reason, paused_by=session.actor)
        self._audit(session, "pause", **self._pause_fields(kind, name, paused, reason=reason))
        self._see_other("/")

    def resume(self) -> str:
        session = self._authorised()
        kind, name = self._pause_target()
        if not self.store.resume(kind, name):
            _fail(409, f"{describe(kind, name)} was not paused: nothing to resume")
        self._audit(session, "resume", **self._pause_fields(kind, name, True))
        self._see_other("/")

    def steer(self) -> str:
        """Set a job type's or a queue's steering (replaced whole) as the signed-in
        operator's (``Queue.steer``; the row's set_by is the database user)."""
        from poel_host.steering import checked, parse_key_weights

        session = self._authorised()
        form = bottle.request.forms
        text = {k: (form.getunicode(k) or "").strip() for k in ("concurrency", "weight", "rate")}
        try:
            params = checked(
                form.getunicode("kind") or "",
                form.getunicode("name") or "",
                concurrency=_int(text["concurrency"], "concurrency")
                if text["concurrency"]
                else None,
                weight=_int(text["weight"], "weight") if text["weight"] else 1,
                rate=_int(text["rate"], "rate") if text["rate"] else None,
                per=_number(form.getunicode("per"), "per"),
                per_key=bool(form.getunicode("per_key")),
                fair=bool(form.getunicode("fair")),
                key_weights=parse_key_weights(
                    w for w in (form.getunicode("key_weights") or "").split(",") if w.strip()
                ),
                key_field=form.getunicode("key_field") or None,
            )
        except (InvalidName, InvalidSteering) as exc:
            _fail(400, str(exc))
        self.store.steer(params)
        fields = {k: v for k, v in params.items() if k not in ("kind", "name")}
        self._audit(
            session, "steer", **self._pause_fields(params["kind"], params["name"], True, **fields)
        )
        self._see_other("/steering")

    def unsteer(self) -> str:
        from poel_host.steering import check_target
        from poel_host.steering import describe as steered

        session = self._authorised()
        kind = bottle.request.forms.getunicode("kind") or ""
        name = bottle.request.forms.getunicode("name") or ""
        try:
            check_target(kind, name)
        except (InvalidName, InvalidSteering) as exc:
            _fail(400, str(exc))
        if not self.store.unsteer(kind, name):
            _fail(409, f"{steered(kind, name)} was not steered: nothing to remove")
        self._audit(session, "unsteer", **self._pause_fields(kind, name, True))
        self._see_other("/steering")

    def _pause_target(self) -> tuple[str, str]:
        kind = bottle.request.forms.getunicode("kind") or ""
        name = bottle.request.forms.getunicode("name") or ""
        try:
            check_name(kind, name)
        except InvalidName as exc:
            _fail(400, str(exc))
        return kind, name

    @staticmethod
    def _pause_fields(kind: str, name: str, changed: bool, **more: Any) -> dict[str, Any]:
        """The audit row of a pause: a type's name as its job_type, a queue's in detail."""
        detail = {"kind": kind, "name": name, "changed": changed, **more}
        return {"job_type": name if kind == "type" else None, "detail": detail}

    def _audit(self, session: auth.Session, action: str, **what: Any) -> None:
        self.store.audit(actor=session.actor, address=self._address(), action=action, **what)
        self.log.info("dashboard action", actor=session.actor, action=action, **what)


def _number(text: str | None, what: str) -> float:
    """A form's number of seconds; 1 when left empty."""
    if not (text or "").strip():
        return 1.0
    try:
        return float(text or "")
    except ValueError:
        _fail(400, f"{what} must be a number of seconds, got {text!r}")
