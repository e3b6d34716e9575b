"""Pausing and resuming from the dashboard: shown on the overview, done only by a signed-in
operator through the dashboard's own form (CSRF, same origin), each action audited."""

from __future__ import annotations

import pytest

from .test_dashboard import TOKEN, csrf_of, sign_in

pytestmark = pytest.mark.process


def test_pause_and_resume_from_the_dashboard_are_signed_in_and_audited(dashboard, poel_conn):
    poel_conn.execute("INSERT INTO poel.jobs (job_type, queue) VALUES ('test.noop', 'bulk')")
    read_only = dashboard()
    assert read_only.post("/pause", {"kind": "queue", "name": "bulk"}).status == 403
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    assert browser.post("/pause", {"kind": "queue", "name": "bulk"}).status == 403  # no session
    assert sign_in(browser).status == 200
    page = browser.get("/")
    assert "nothing is paused" in page.text and 'id="pause"' in page.text
    csrf = csrf_of(page)
    forged = browser.post("/pause", {"csrf": "0" * 64, "kind": "queue", "name": "bulk"})
    assert forged.status == 403
    elsewhere = browser.post(
        "/pause",
        {"csrf": csrf, "kind": "queue", "name": "bulk"},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status == 403
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.pauses").fetchone()["n"] == 0

    for form, says in (
        ({"kind": "type", "name": "<script>x</script>"}, "is not a valid name"),
        ({"kind": "queue", "name": "q" * 10_000}, "over the limit of 200"),
        ({"kind": "queue", "name": "a\x00b"}, "NUL"),
        ({"kind": "job", "name": "x"}, "only a queue or a job type"),
        ({"kind": "queue", "name": ""}, "is empty"),
    ):
        refused = browser.post("/pause", {"csrf": csrf, **form})
        assert refused.status == 400 and says in refused.text, form
        assert "<script>x" not in refused.text and "Traceback" not in refused.text

    done = browser.post("/pause", {"csrf": csrf, "kind": "queue", "name": "bulk", "reason": "db"})
    assert done.status == 200
    queues = done.text.split('id="queues"')[1].split("</table>")[0]
    assert 'bulk <strong class="paused">paused</strong>' in queues
    pauses = done.text.split('id="pauses"')[1].split("</table>")[0]
    assert "bulk" in pauses and "ada" in pauses and "db" in pauses
    assert browser.post("/pause", {"csrf": csrf, "kind": "queue", "name": "bulk"}).status == 200
    [row] = poel_conn.execute("SELECT kind, name, paused_by, reason FROM poel.pauses").fetchall()
    assert row == {"kind": "queue", "name": "bulk", "paused_by": "ada", "reason": "db"}

    resumed = browser.post("/resume", {"csrf": csrf, "kind": "queue", "name": "bulk"})
    assert resumed.status == 200 and "nothing is paused" in resumed.text
    again = browser.post("/resume", {"csrf": csrf, "kind": "queue", "name": "bulk"})
    assert again.status == 409 and "was not paused" in again.text

    audit = poel_conn.execute(
        "SELECT actor, action, job_type, detail FROM poel.audit"
        " WHERE action IN ('pause', 'resume') ORDER BY id"
    ).fetchall()
    assert audit == [
        {
            "actor": "ada",
            "action": "pause",
            "job_type": None,
            "detail": {"kind": "queue", "name": "bulk", "changed": True, "reason": "db"},
        },
        {
            "actor": "ada",
            "action": "pause",
            "job_type": None,
            "detail": {"kind": "queue", "name": "bulk", "changed": False, "reason": None},
        },
        {
            "actor": "ada",
            "action": "resume",
            "job_type": None,
            "detail": {"kind": "queue", "name": "bulk", "changed": True},
        },
    ]
