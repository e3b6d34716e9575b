"""Steering on the dashboard: its page lists every row with what is in use now, for anyone
who may read the dashboard; setting and removing a steering is a signed-in operator's,
through the dashboard's own form (CSRF, same origin), each action audited."""

from __future__ import annotations

import pytest

from .test_dashboard import TOKEN, csrf_of, sign_in

pytestmark = pytest.mark.process


def _table(page) -> str:
    return page.text.split('id="steering"')[1].split("</table>")[0]


def test_the_steering_page_shows_each_row_and_what_is_in_use(dashboard, poel_conn):
    poel_conn.execute("SELECT poel.steer('type', 'test.noop', 4, 10, 60000, weight => 2)")
    poel_conn.execute(
        "SELECT poel.steer('type', 'test.keyed', 3, per_key => true, fair => true,"
        " key_weights => '{\"big\": 3}', key_field => 'tenant')"
    )
    poel_conn.execute(
        "INSERT INTO poel.steering (kind, name, concurrency, source)"
        " VALUES ('queue', '<b>bulk</b>', 5, 'code')"
    )
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, key, state, slots, ready) VALUES"
        " ('test.noop', '<b>bulk</b>', NULL, 'running', 2, false),"
        " ('test.keyed', 'default', 'a', 'running', 1, false),"
        " ('test.keyed', 'default', 'a', 'running', 1, false),"
        " ('test.keyed', 'default', 'b', 'running', 1, false)"
    )
    poel_conn.execute(
        "INSERT INTO poel.steering_starts SELECT 'type:test.noop', now() FROM generate_series(1, 3)"
    )
    browser = dashboard()
    page = browser.get("/steering")
    assert page.status == 200 and 'href="/steering" class="here"' in page.text
    rows = _table(page).split("<tr>")[2:]
    assert len(rows) == 3
    queue, keyed, noop = rows
    assert "&lt;b&gt;bulk&lt;/b&gt;" in queue and "<b>bulk" not in queue
    assert "2/5" in queue and "code" in queue
    assert "2 keys, busiest 2/3" in keyed and "yes (big=3)" in keyed and "tenant" in keyed
    assert "4 (weight 2)" in noop and "2/4" in noop and "3/10 per 60s" in noop
    assert "operator" in noop and "postgres" in noop
    assert 'id="steer"' not in page.text and "/unsteer" not in page.text  # read-only

    poel_conn.execute("DELETE FROM poel.steering")
    assert "nothing is steered" in browser.get("/steering").text


def test_steer_and_unsteer_from_the_dashboard_are_signed_in_and_audited(dashboard, poel_conn):
    form = {"kind": "type", "name": "test.noop", "concurrency": "3"}
    read_only = dashboard()
    assert read_only.post("/steer", form).status == 403
    assert read_only.post("/unsteer", {"kind": "type", "name": "test.noop"}).status == 403
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    assert browser.post("/steer", form).status == 403  # no session
    assert sign_in(browser).status == 200
    page = browser.get("/steering")
    assert 'id="steer"' in page.text
    csrf = csrf_of(page)
    assert browser.post("/steer", {"csrf": "0" * 64, **form}).status == 403
    elsewhere = browser.post(
        "/steer", {"csrf": csrf, **form}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status == 403
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.steering").fetchone()["n"] == 0

    for bad, says in (
        ({"concurrency": "2", "weight": "3"}, "weight 3 is more than the concurrency 2"),
        ({"concurrency": "x"}, "concurrency must be a number"),
        ({"concurrency": "", "rate": "5", "per": "soon"}, "per must be a number of seconds"),
        ({"concurrency": ""}, "nothing to steer"),
        ({"name": "<script>x</script>"}, "is not a valid name"),
        ({"kind": "queue", "name": "bulk", "per_key": "1"}, "steer the job type"),
        ({"fair": "1", "key_weights": "big"}, "a key weight is KEY=N"),
    ):
        refused = browser.post("/steer", {"csrf": csrf, **form, **bad})
        assert refused.status == 400 and says in refused.text, bad
        assert "<script>x" not in refused.text and "Traceback" not in refused.text

    done = browser.post(
        "/steer",
        {
            "csrf": csrf,
            **form,
            "rate": "5",
            "per": "0.5",
            "per_key": "1",
            "fair": "1",
            "key_weights": "big=3, small=1",
            "key_field": "tenant",
        },
    )
    assert done.status == 200 and "0/5 per 0.5s" in _table(done)
    row = poel_conn.execute("SELECT * FROM poel.steering").fetchone()
    assert (row["concurrency"], row["rate"], row["per_ms"], row["per_key"], row["fair"]) == (
        3,
        5,
        500,
        True,
        True,
    )
    assert (row["key_weights"], row["key_field"], row["source"]) == (
        {"big": 3, "small": 1},
        "tenant",
        "operator",
    )

    removed = browser.post("/unsteer", {"csrf": csrf, "kind": "type", "name": "test.noop"})
    assert removed.status == 200 and "nothing is steered" in removed.text
    again = browser.post("/unsteer", {"csrf": csrf, "kind": "type", "name": "test.noop"})
    assert again.status == 409 and "was not steered" in again.text

    audit = poel_conn.execute(
        "SELECT actor, action, job_type, detail FROM poel.audit"
        " WHERE action IN ('steer', 'unsteer') ORDER BY id"
    ).fetchall()
    assert [(a["actor"], a["action"], a["job_type"]) for a in audit] == [
        ("ada", "steer", "test.noop"),
        ("ada", "unsteer", "test.noop"),
    ]
    assert audit[0]["detail"]["concurrency"] == 3 and audit[0]["detail"]["per_ms"] == 500


def test_a_jobs_page_shows_its_key_escaped(dashboard, poel_conn):
    row = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, key) VALUES ('test.noop', '<b>tenant</b>') RETURNING id"
    ).fetchone()
    page = dashboard().get(f"/jobs/{row['id']}")
    assert page.status == 200
    assert '<td id="key">&lt;b&gt;tenant&lt;/b&gt;</td>' in page.text
