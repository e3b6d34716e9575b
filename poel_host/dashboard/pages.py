"""The dashboard's pages, all read-only: the overview, the jobs list, one job, running
jobs, schedules, steering, workers, the audit log. Each reads the database through indexes only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import bottle

from poel_host.dashboard.base import DashboardBase, _fail, _int
from poel_host.dashboard.views import clip
from poel_host.jobs import JOB_STATES

PAGE = 50  # jobs a page
WINDOW = 10_000  # jobs a filtered page looks at, at most (see dashboard_jobs in the SQL)
RUNNING_LIMIT = 500
CLIP = 2_000  # characters of a payload or an error shown before "show all"


class Pages(DashboardBase):
    """The pages (GET routes that show the database)."""

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
        pauses = self.store.list_pauses()
        return self._page(
            "overview",
            pauses=pauses,
            paused={(p["kind"], p["name"]) for p in pauses},
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
        payload = result = None
        if self.settings.dashboard_shows_payloads:  # a result, like a payload, may be personal
            payload = clip(json.dumps(row["payload"], indent=2, ensure_ascii=False), limit)
            if row["result"] is not None:
                result = clip(json.dumps(row["result"], indent=2, ensure_ascii=False), limit)
        errors = [
            {
                **error,
                "error": clip(str(error.get("error", "")), limit),
                "traceback": clip(error["traceback"], limit) if error.get("traceback") else None,
            }
            for error in reversed(row["errors"] or [])
        ]
        workflow = None
        if row.get("workflow_id") is not None:
            workflow = self.store.get_workflow(row["workflow_id"])
        return self._page(
            "job",
            title=f"Job {number}",
            job=row,
            workflow=workflow,
            payload=payload,
            result=result,
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

    def steering(self) -> str:
        from poel_host.steering import in_use_text, window_text

        rows = self.store.list_steering()
        return self._page(
            "steering", title="Steering", rows=rows, in_use=in_use_text, window=window_text
        )

    def workers(self) -> str:
        return self._page("workers", title="Workers", rows=self.store.list_workers())

    def audit(self) -> str:
        return self._page("audit", title="Audit", rows=self.store.audit_log(limit=200))
