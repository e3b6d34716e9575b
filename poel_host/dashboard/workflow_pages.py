"""The dashboard's workflow pages (issue 20), read-only: the newest workflows, filtered by
state and keyset-paginated as the jobs page is, and one workflow: its state, the step
that failed and why, a picture of its graph (:mod:`.graph`, drawn on the server as inline
SVG by :mod:`.graph_svg`) and a table of its steps, which screen readers and graphs too
big to draw whole are served by. The steps are read as ``Queue.workflow`` reads them
(:func:`poel_host.workflows.read_workflow`): one statement for the workflow's row, one
for its steps and their dependencies.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from urllib.parse import urlencode

import bottle

from poel_host.dashboard.base import DashboardBase, _fail, _int
from poel_host.dashboard.graph import Node, lay_out
from poel_host.dashboard.graph_svg import svg, took
from poel_host.dashboard.views import clip

PAGE = 50  # workflows a page
WINDOW = 10_000  # workflows a filtered page looks at, at most (dashboard_workflows)
STEPS_PAGE = 100  # steps in a page of the table
CLIP = 2_000  # characters of the failure shown before "show all"
STEP_STATES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")


class WorkflowPages(DashboardBase):
    """``/workflows`` and ``/workflows/<id>``."""

    def workflows(self) -> str:
        from poel_host.workflows import WORKFLOW_STATES

        query = bottle.request.query
        state = query.getunicode("state") or None
        if state is not None and state not in WORKFLOW_STATES:
            _fail(400, f"unknown state {state!r}: one of {', '.join(WORKFLOW_STATES)}")
        before = _int(query.getunicode("before"), "before") if query.get("before") else 2**63 - 1
        rows, next_before = self.store.browse_workflows(
            state=state, before=before, limit=PAGE, window=WINDOW
        )
        shown = {"state": state} if state else {}
        more = None if next_before is None else "?" + urlencode({**shown, "before": next_before})
        return self._page(
            "workflows",
            title="Workflows",
            rows=rows,
            state=state,
            states=WORKFLOW_STATES,
            more=more,
            next_before=next_before,
            window=WINDOW if len(rows) < PAGE and state is not None else None,
        )

    def workflow(self, workflow_id: str) -> str:
        from poel_host.workflows import read_workflow

        number = _int(workflow_id, "workflow id")
        flow = read_workflow(self.store, number)
        if flow is None:
            _fail(404, f"no workflow with id {number}")
        query = bottle.request.query
        only = query.getunicode("steps") or None
        if only is not None and only not in STEP_STATES:
            _fail(400, f"unknown step state {only!r}: one of {', '.join(STEP_STATES)}")
        start = _int(query.getunicode("from"), "from") if query.get("from") else 1
        now = dt.datetime.now(dt.timezone.utc)
        durations = {
            s.name: _duration(s.started_at, s.finished_at, s.state, now) for s in flow.steps
        }
        nodes = [
            Node(s.name, s.after, s.state, s.job_id, durations[s.name], s.error) for s in flow.steps
        ]
        picture = lay_out(nodes)
        title = f"Workflow {number}"
        drawing = svg(
            picture,
            root=bottle.request.script_name.rstrip("/"),
            title=f"{flow.name}: {len(nodes)} steps, {flow.state}",
        )
        listed = [s for s in flow.steps if only is None or s.state == only]
        page = listed[start - 1 : start - 1 + STEPS_PAGE]
        failed = next((s for s in flow.steps if s.name == flow.failed_step), None)
        full = query.get("full") == "1"
        return self._page(
            "workflow",
            title=title,
            flow=flow,
            failed=failed,
            failed_error=clip(flow.failed_error or "", None if full else CLIP),
            counts=Counter(s.state for s in flow.steps),
            step_states=STEP_STATES,
            picture=picture,
            drawing=drawing,
            steps=page,
            durations=durations,
            took=took,
            only=only,
            listed=len(listed),
            start=start,
            later=start + STEPS_PAGE if start + STEPS_PAGE <= len(listed) else None,
            earlier=max(1, start - STEPS_PAGE) if start > 1 else None,
            clip=clip,
        )


def _duration(
    started: dt.datetime | None, finished: dt.datetime | None, state: str, now: dt.datetime
) -> float | None:
    """Seconds from the step's last start to its end, or to now while it runs."""
    if started is None:
        return None
    if finished is not None:
        return (finished - started).total_seconds()
    return (now - started).total_seconds() if state == "running" else None
