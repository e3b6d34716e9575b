"""The dashboard, served by a real ``poel-host dashboard`` process, over HTTP.

Pages show what the database holds, escaped (a ``<script>`` in an error is text), long
texts cut with a way to see all; bad input gets a 4xx page; actions need the token, a
signed-in session and the form's CSRF token, and each is audited.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

pytestmark = pytest.mark.process

TOKEN = "a-long-dashboard-token-0123456789"
SCRIPT = "<script>document.title='pwned'</script>"


def failed_job(conn, *, error: str = f"ValueError: {SCRIPT}", payload=None) -> int:
    history = [
        {"attempt": 1, "error": "first try: " + error, "at": "2026-12-01T10:00:00+00:00"},
        {"attempt": 2, "error": error, "at": "2026-12-01T10:01:00+00:00", "traceback": "tb"},
    ]
    row = conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, attempts, max_attempts, last_error,"
        " errors, finished_at) VALUES ('test.fail', %s, 'failed', 2, 2, %s, %s, now())"
        " RETURNING id",
        [json.dumps(payload or {"key": "<b>bold</b>"}), error, json.dumps(history)],
    ).fetchone()
    return int(row["id"])


def test_pages_show_failures_escaped_and_bad_input_gets_a_clear_4xx(dashboard, poel_conn):
    job_id = failed_job(poel_conn, payload={"key": "x" * 5000})
    browser = dashboard()

    overview = browser.get("/")
    assert overview.status == 200
    failed_table = overview.text.split('id="failed"')[1]
    assert "test.fail" in failed_table and '<td class="n">1</td>' in failed_table

    page = browser.get(f"/jobs/{job_id}")
    assert page.status == 200
    assert SCRIPT not in page.text and "&lt;script&gt;" in page.text
    assert page.text.count("&lt;script&gt;") >= 2  # the whole history, newest first
    assert page.text.index("attempt 2") < page.text.index("attempt 1")
    assert "x" * 5000 not in page.text and "show all" in page.text  # payload cut
    assert "x" * 5000 in browser.get(f"/jobs/{job_id}?full=1").text

    listing = browser.get("/jobs?state=failed&error=SCRIPT")
    assert f'href="/jobs/{job_id}"' in listing.text
    assert f'href="/jobs/{job_id}"' not in browser.get("/jobs?error=nothing-like-it").text
    for path in ("/running", "/schedules", "/workers", "/audit", "/jobs"):
        assert browser.get(path).status == 200, path

    for path, status, says in (
        ("/jobs/999999", 404, "no job with id 999999"),
        ("/jobs/abc", 400, "job id must be a number"),
        ("/jobs?state=bogus", 400, "unknown state"),
        ("/jobs?before=x", 400, "before must be a number"),
        ("/nowhere", 404, "Not Found"),
    ):
        answer = browser.get(path)
        assert answer.status == status, (path, answer.text)
        assert says in answer.text and "Traceback" not in answer.text, path
    # Read-only without a token: no action, no sign-in, and every page says so.
    refused = browser.post(f"/jobs/{job_id}/retry", {})
    assert refused.status == 403 and "read-only" in refused.text
    assert 'id="actions"' not in page.text
    assert browser.get("/signin").status == 403
    for answer in (overview, page, listing, refused, browser.get("/nowhere")):
        assert 'id="open"' in answer.text and "POEL_DASHBOARD_TOKEN" in answer.text


def test_payloads_are_hidden_in_production(dashboard, poel_conn):
    job_id = failed_job(poel_conn, payload={"key": "ada@example.org"})
    page = dashboard(POEL_ENV="production").get(f"/jobs/{job_id}")
    assert page.status == 200 and "ada@example.org" not in page.text and "hidden" in page.text


def test_actions_need_the_token_a_session_and_the_forms_csrf_token_and_are_audited(
    dashboard, poel_conn
):
    job_id = failed_job(poel_conn)
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)

    assert browser.post(f"/jobs/{job_id}/retry", {}).status == 403  # not signed in
    wrong = browser.post("/signin", {"name": "mallory", "token": "not-the-token-at-all"})
    assert wrong.status == 403 and "wrong token" in wrong.text
    assert browser.post("/signin", {"name": "ada", "token": TOKEN}).status == 200
    page = browser.get(f"/jobs/{job_id}")
    assert 'id="retry"' in page.text and "ada" in page.text and 'id="open"' not in page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)

    forged = browser.post(f"/jobs/{job_id}/retry", {"csrf": "0" * 64})
    assert forged.status == 403 and "did not come from the dashboard" in forged.text
    elsewhere = browser.post(
        f"/jobs/{job_id}/retry", {"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status == 403
    state = poel_conn.execute("SELECT state FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert state["state"] == "failed"

    done = browser.post(f"/jobs/{job_id}/retry", {"csrf": csrf})
    assert done.status == 200 and done.url.endswith(f"/jobs/{job_id}")
    row = poel_conn.execute("SELECT state, attempts FROM poel.jobs WHERE id = %s", [job_id])
    assert row.fetchone() == {"state": "queued", "attempts": 0}
    again = browser.post(f"/jobs/{job_id}/retry", {"csrf": csrf})
    assert again.status == 409 and "not failed or cancelled" in again.text

    others = [failed_job(poel_conn) for _ in range(3)]
    assert browser.post("/retry-failed", {"csrf": csrf, "job_type": "test.fail"}).status == 200
    states = poel_conn.execute(
        "SELECT DISTINCT state::text FROM poel.jobs WHERE id = ANY(%s)", [others]
    ).fetchall()
    assert states == [{"state": "queued"}]

    audit = poel_conn.execute(
        "SELECT actor, address, action, job_id, job_type, detail FROM poel.audit ORDER BY id"
    ).fetchall()
    assert [row.pop("address") for row in audit] == ["127.0.0.1"] * 3
    assert audit == [
        {
            "actor": "ada",
            "action": "sign_in",
            "job_id": None,
            "job_type": None,
            "detail": {},
        },
        {
            "actor": "ada",
            "action": "retry",
            "job_id": job_id,
            "job_type": "test.fail",
            "detail": {},
        },
        {
            "actor": "ada",
            "action": "retry_failed_type",
            "job_id": None,
            "job_type": "test.fail",
            "detail": {"jobs": 3},
        },
    ]
    assert "retry_failed_type" in browser.get("/audit").text


PAGES = ("/", "/jobs", "/jobs?state=failed", "/running", "/schedules", "/workers", "/audit")


def sign_in(browser, name: str = "ada", token: str = TOKEN, follow: bool = True, **form: str):
    return browser.post("/signin", {"name": name, "token": token, **form}, follow=follow)


def sent_to_sign_in(answer, path: str) -> bool:
    """A stranger's answer: a 303 to the sign-in page, back to ``path`` afterwards."""
    location = answer.headers["Location"] if answer.status == 303 else ""
    return location == "/signin?" + urllib.parse.urlencode({"next": path})


def csrf_of(page) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)


def test_with_a_token_every_page_and_path_sends_a_stranger_to_sign_in(dashboard, poel_conn):
    job_id = failed_job(poel_conn)
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    paths = (*PAGES, f"/jobs/{job_id}", f"/jobs/{job_id}?full=1", "/jobs/abc", "/nowhere")
    for path in (*paths, "/static/style.css", "/favicon.ico", "/signout"):
        answer = browser.get(path, follow=False)
        assert sent_to_sign_in(answer, path), (path, answer.status, answer.headers)
        assert "test.fail" not in answer.text and "ValueError" not in answer.text, path
    for path in (f"/jobs/{job_id}/retry", "/retry-failed", "/signout", "/audit"):
        refused = browser.post(path, {}, follow=False)
        assert refused.status == 403 and "sign in" in refused.text, path
    # The sign-in page is all a stranger sees: no menu, no job, not the audit log.
    form = browser.get("/jobs", follow=True)
    assert form.url.endswith("/signin?next=%2Fjobs") and 'id="signin"' in form.text
    assert 'href="/jobs"' not in form.text and 'name="next" value="/jobs"' in form.text
    assert poel_conn.execute("SELECT count(*) FROM poel.dashboard_sessions").fetchone() == {
        "count": 0
    }
    # Signing in goes back to the page asked for, which now shows.
    page = sign_in(browser, next=f"/jobs/{job_id}?full=1")
    assert page.status == 200 and page.url.endswith(f"/jobs/{job_id}?full=1")
    assert "test.fail" in page.text
    for path in paths:
        assert browser.get(path, follow=False).status in (200, 400, 404), path


def test_sign_in_goes_back_only_to_a_local_path(dashboard, poel_conn):
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    for elsewhere in (
        "//evil.example/jobs",
        "https://evil.example/",
        "/\\evil.example",
        "/\\/evil.example",
        "javascript:alert(1)",
        "jobs",
        "/jobs\r\nLocation: https://evil.example",
        "/signin",
    ):
        form = browser.get("/signin?" + urllib.parse.urlencode({"next": elsewhere}))
        assert form.status == 200 and 'name="next"' not in form.text, elsewhere
        answer = sign_in(browser, next=elsewhere, follow=False)
        assert answer.status == 303 and answer.headers["Location"] == "/", elsewhere
        poel_conn.execute("DELETE FROM poel.dashboard_signins")  # not the limit's test


def test_an_expired_signed_out_or_forged_session_is_refused(dashboard, poel_conn):
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN, POEL_DASHBOARD_SESSION_HOURS="0.5")
    sign_in(browser)
    row = poel_conn.execute(
        "SELECT actor, address, expires_at - issued_at AS lasts, revoked_at,"
        " octet_length(id_hash) AS hashed FROM poel.dashboard_sessions"
    ).fetchone()
    assert row["actor"] == "ada" and row["address"] == "127.0.0.1"
    assert row["lasts"].total_seconds() == 1800 and row["revoked_at"] is None
    sid = browser.cookie()
    assert len(sid) == 43 and row["hashed"] == 32  # an opaque id; the server keeps a hash
    assert browser.get("/workers", follow=False).status == 200

    # Expired on the server, whatever the browser's cookie says.
    poel_conn.execute("UPDATE poel.dashboard_sessions SET expires_at = now()")
    answer = browser.get("/workers", follow=False)
    assert sent_to_sign_in(answer, "/workers")
    assert "poel_dashboard=;" in answer.headers["Set-Cookie"].replace('""', "")

    # Signed out: revoked on the server, so a copy of the cookie is refused too.
    page = sign_in(browser)
    copy = browser.cookie()
    assert copy != sid
    out = browser.post("/signout", {"csrf": csrf_of(page)}, follow=False)
    assert out.status == 303 and out.headers["Location"] == "/signin"
    revoked = poel_conn.execute(
        "SELECT count(*) FROM poel.dashboard_sessions WHERE revoked_at IS NOT NULL"
    ).fetchone()
    assert revoked == {"count": 1}
    stolen = browser.get("/audit", headers={"Cookie": f"poel_dashboard={copy}"}, follow=False)
    assert sent_to_sign_in(stolen, "/audit")

    # Crafted: a made-up id; the old signed format; a row planted without the token.
    planted = "p" * 43
    poel_conn.execute(
        "INSERT INTO poel.dashboard_sessions (id_hash, token_mac, actor, expires_at)"
        " VALUES (sha256(%s::bytea), sha256('guess'::bytea), 'eve', now() + interval '1 h')",
        [planted.encode()],
    )
    old_format = "YWRh.00112233445566778899aabbccddeeff." + "0" * 64
    for cookie in ("x" * 43, old_format, planted, "", "a" * 5000):
        answer = browser.get("/", headers={"Cookie": f"poel_dashboard={cookie}"}, follow=False)
        assert sent_to_sign_in(answer, "/"), cookie[:50]

    actions = poel_conn.execute("SELECT actor, action FROM poel.audit ORDER BY id").fetchall()
    assert [(a["actor"], a["action"]) for a in actions] == [
        ("ada", "sign_in"),
        ("ada", "sign_in"),
        ("ada", "sign_out"),
    ]


def test_a_session_from_a_previous_token_is_refused(dashboard, poel_conn):
    before = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    sign_in(before)
    sid = before.cookie()
    assert before.get("/jobs", follow=False).status == 200
    after = dashboard(POEL_DASHBOARD_TOKEN="another-long-token-9876543210")
    answer = after.get("/jobs", headers={"Cookie": f"poel_dashboard={sid}"}, follow=False)
    assert sent_to_sign_in(answer, "/jobs")
    # still live in the table, and still good with the token it was made under
    assert before.get("/jobs", follow=False).status == 200


def test_sign_in_attempts_are_limited_per_address(dashboard, poel_conn):
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    for _ in range(5):
        assert sign_in(browser, token="not-the-token-at-all").status == 403
    for forged in ({}, {"X-Forwarded-For": "198.51.100.7"}):
        limited = browser.post(
            "/signin", {"name": "ada", "token": TOKEN}, headers=forged, follow=False
        )
        assert limited.status == 429 and "too many sign-in attempts" in limited.text
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "Set-Cookie" not in limited.headers
    # another dashboard process on the same database counts the same attempts
    other = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    assert sign_in(other).status == 429
    # the window over, the address may try again
    poel_conn.execute("UPDATE poel.dashboard_signins SET window_start = now() - interval '61 s'")
    assert sign_in(other).status == 200


def test_sign_ins_are_counted_by_address_an_ipv6_client_by_its_64():
    from poel_host.dashboard.client import limit_key

    assert limit_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert limit_key("::ffff:192.0.2.1") == limit_key("192.0.2.1") == "192.0.2.1"


def test_the_workers_page_lists_two_serves_with_their_plugins(serve, dashboard):
    plain = serve()
    hooked = serve(POEL_LOAD_PLUGINS="poel-testjobs,poel-testhooks")
    page = dashboard().get("/workers")
    rows = page.text.split('id="workers"')[1].split("</table>")[0]
    for worker in (plain, hooked):
        assert f'<td class="n">{worker.pid}</td>' in rows
    assert rows.count("poel-testjobs") == 2 and rows.count("poel-testhooks") == 1
    assert rows.count("alive") == 2


def test_mounted_under_a_prefix_as_a_wsgi_app_its_links_and_cookie_carry_the_prefix(poel_dsn):
    """What a Flask or Django project does with ``make_app()``: call it as a WSGI app under
    a SCRIPT_NAME of its own. Also where the scheme and the peer can be set: the cookie is
    ``Secure`` over HTTPS, and ``X-Forwarded-*`` count only from a trusted proxy."""
    import io
    import wsgiref.util

    from poel_host.dashboard import make_app
    from poel_host.database import make_pool
    from poel_host.plugins import load_plugins
    from poel_host.settings import load_settings
    from poel_host.store import Store

    pool = make_pool(poel_dsn, name="dashboard-test", min_size=0, max_size=1)

    def app_with(**env):
        settings = load_settings(DATABASE_URL=poel_dsn, POEL_DASHBOARD_TOKEN=TOKEN, **env)
        return make_app(settings, store=Store("poel", pool), plugins=load_plugins([]))

    def call(app, method: str, path: str, form: dict[str, str] | None = None, **extra):
        environ: dict = {}
        wsgiref.util.setup_testing_defaults(environ)
        body = urllib.parse.urlencode(form or {}).encode()
        environ.update(
            {
                "REQUEST_METHOD": method,
                "SCRIPT_NAME": "/poel",
                "PATH_INFO": path,
                "REMOTE_ADDR": "127.0.0.1",
                "CONTENT_TYPE": "application/x-www-form-urlencoded",
                "CONTENT_LENGTH": str(len(body)),
                **extra,
            }
        )
        environ["wsgi.input"] = io.BytesIO(body)
        answer: dict = {}

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

        answer["text"] = b"".join(app(environ, start_response)).decode()
        return answer

    def sign_in(app, **extra) -> str:
        answer = call(app, "POST", "/signin", {"name": "ada", "token": TOKEN}, **extra)
        assert answer["status"] == 303, answer["text"]
        return str(answer["headers"]["Set-Cookie"])

    app = app_with()
    try:
        stranger = call(app, "GET", "/")
        assert stranger["status"] == 303
        assert stranger["headers"]["Location"] == "/poel/signin?next=%2F"
        form = call(app, "GET", "/signin")
        assert form["status"] == 200 and 'action="/poel/signin"' in form["text"]
        assert 'href="/poel/jobs"' not in form["text"]  # a stranger is shown no page
        signed_in = call(app, "POST", "/signin", {"name": "ada", "token": TOKEN})
        assert signed_in["status"] == 303
        assert signed_in["headers"]["Location"] == "/poel/"
        cookie = signed_in["headers"]["Set-Cookie"]
        assert "Path=/poel/" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "secure" not in cookie.lower()
        session = cookie.split(";")[0]
        overview = call(app, "GET", "/", HTTP_COOKIE=session)
        assert overview["status"] == 200 and 'href="/poel/jobs"' in overview["text"]
        assert call(app, "GET", "/jobs/12345", HTTP_COOKIE=session)["status"] == 404

        # Secure over HTTPS; a forwarded scheme or address from anyone else is not believed.
        assert "; secure" in sign_in(app, **{"wsgi.url_scheme": "https"}).lower()
        forged = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
        assert "secure" not in sign_in(app, **forged).lower()
        behind = app_with(POEL_DASHBOARD_TRUSTED_PROXIES="10.0.0.0/8")
        proxied = {
            "REMOTE_ADDR": "10.1.2.3",
            "HTTP_X_FORWARDED_PROTO": "https",
            "HTTP_X_FORWARDED_FOR": "198.51.100.7, 203.0.113.9, 10.0.0.5",
        }
        assert "; secure" in sign_in(behind, **proxied).lower()
        assert "secure" not in sign_in(behind, **{**proxied, "REMOTE_ADDR": "127.0.0.1"}).lower()
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT address FROM poel.dashboard_sessions ORDER BY id"
            ).fetchall()
        # 198.51.100.7 was written by the client; the proxy saw 203.0.113.9
        assert [r["address"] for r in rows] == ["127.0.0.1"] * 3 + ["203.0.113.9", "127.0.0.1"]
    finally:
        pool.close()


def test_the_dashboard_refuses_an_out_of_date_schema_in_one_line(poel_cli, poel_dsn, poel_conn):
    poel_conn.execute("DELETE FROM poel.migrations WHERE plugin = 'poel-host' AND version = 8")
    result = poel_cli("dashboard", "--port", "0", DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "poel-host:0008_dashboard" in result.stderr and "poel-host migrate" in result.stderr


def test_a_greenlet_or_thread_jobs_failure_shows_its_traceback(run_job, dashboard):
    """Not only process jobs: the error history of every executor keeps the traceback,
    and the job's page shows it under its error."""
    ids = [run_job(t, {"key": "x"}).id for t in ("test.missing_key", "test.thread_missing_key")]
    browser = dashboard()
    for job_id in ids:
        page = browser.get(f"/jobs/{job_id}")
        assert page.status == 200
        assert "<summary>traceback</summary>" in page.text
        assert "Traceback (most recent call last)" in page.text and "in missing_key" in page.text


def test_the_job_page_shows_progress_and_result_escaped(dashboard, poel_conn):
    row = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, finished_at, result, progress,"
        " progress_message) VALUES ('test.noop', '{}', 'succeeded', now(), %s, 0.5, %s)"
        " RETURNING id",
        [json.dumps({"note": SCRIPT}), SCRIPT],
    ).fetchone()
    page = dashboard().get(f"/jobs/{row['id']}")
    assert page.status == 200
    assert SCRIPT not in page.text
    progress = page.text.split('id="progress"')[1].split("</td>")[0]
    assert "50%" in progress and "&lt;script&gt;" in progress
    result = page.text.split('id="result"')[1].split("</pre>")[0]
    assert "&lt;script&gt;" in result and "note" in result


def test_a_job_page_shows_how_many_times_the_job_snoozed(dashboard, poel_conn):
    job_id = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, snoozes) VALUES ('test.noop', '{}', 7)"
        " RETURNING id"
    ).fetchone()["id"]
    never = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload) VALUES ('test.noop', '{}') RETURNING id"
    ).fetchone()["id"]
    browser = dashboard()
    assert '<td id="snoozes">7</td>' in browser.get(f"/jobs/{job_id}").text
    assert 'id="snoozes"' not in browser.get(f"/jobs/{never}").text  # shown once it snoozed
