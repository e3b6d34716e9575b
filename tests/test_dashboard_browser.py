"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium; ``.ci/run`` installs them), against a real ``poel-host dashboard`` and
real ``serve`` processes; run once, in ``tox -e browser``. Each page's screenshot is saved
under ``artifacts/dashboard/`` (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_dashboard import SCRIPT, TOKEN, failed_job
from tests.test_dashboard_workflows import ended_diamond

pytestmark = [pytest.mark.process, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"


@pytest.fixture
def chromium():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait(driver, condition, what: str, timeout: float = 10):
    """Poll ``condition(driver)`` until truthy (Selenium's WebDriverWait), or fail."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout}s waiting for {what}: at {driver.current_url}")


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text  # type: ignore[no-any-return]


def sign_in(driver, token: str = TOKEN, shot_as: str | None = None) -> None:
    """Fill in the sign-in page the browser is on, and wait for the page it leads to."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.NAME, "name").send_keys("ada")
    driver.find_element(By.NAME, "token").send_keys(token)
    if shot_as:
        shot(driver, shot_as)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    # A click does not wait for the page it loads: wait for a signed-in page.
    wait(driver, lambda d: d.find_elements(By.ID, "signout"), "sign-in")


def at_sign_in(driver, base: str, path: str) -> bool:
    """Whether the browser was sent to sign in, to come back to ``path``."""
    from urllib.parse import urlencode

    return bool(driver.current_url == f"{base}/signin?{urlencode({'next': path})}")


def test_failures_their_history_no_script_and_retry_only_with_the_token(
    chromium,
    dashboard,
    poel_conn,
    serve,
):
    from selenium.webdriver.common.by import By

    job_id = failed_job(poel_conn)
    readonly = dashboard()
    driver = chromium

    driver.get(readonly.base + "/")
    failed = text_of(driver, "failed")
    assert "test.fail 1" in failed
    shot(driver, "overview")

    driver.get(f"{readonly.base}/jobs/{job_id}")
    assert driver.title == f"Job {job_id} · Poel"  # the error's script did not run
    errors = driver.find_elements(By.CSS_SELECTOR, "#errors pre.error")
    assert [e.text for e in errors] == [f"ValueError: {SCRIPT}", f"first try: ValueError: {SCRIPT}"]
    assert driver.find_elements(By.ID, "retry") == []  # read-only: no action offered
    shot(driver, "job")

    # Without the token the action is refused, however it is sent.
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'post';"
        f"f.action = '/jobs/{job_id}/retry'; document.body.appendChild(f); f.submit();"
    )
    wait(driver, lambda d: d.find_elements(By.ID, "message"), "the refusal page")
    assert "read-only" in text_of(driver, "message")
    shot(driver, "refused")

    writable = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    driver.get(writable.base + "/signin")
    sign_in(driver, shot_as="signin")
    driver.get(f"{writable.base}/jobs/{job_id}")
    driver.find_element(By.ID, "retry").click()
    wait(driver, lambda d: text_of(d, "state") == "queued", "the job queued again")
    shot(driver, "retried")
    row = poel_conn.execute("SELECT actor, action FROM poel.audit WHERE job_id = %s", [job_id])
    assert row.fetchall() == [{"actor": "ada", "action": "retry"}]

    driver.get(writable.base + "/jobs?state=queued")
    assert f"{job_id} test.fail" in text_of(driver, "jobs")
    shot(driver, "jobs")
    driver.get(writable.base + "/audit")
    assert "ada" in text_of(driver, "audit")
    shot(driver, "audit")

    # Running and workers, with two serves.
    plain = serve()
    hooked = serve(POEL_LOAD_PLUGINS="poel-testjobs,poel-testhooks")
    driver.get(writable.base + "/workers")
    workers = text_of(driver, "workers")
    for worker in (plain, hooked):
        line = next(line for line in workers.splitlines() if f" {worker.pid} " in line)
        assert "alive" in line and "poel-testjobs" in line
    assert workers.count("poel-testhooks") == 1
    shot(driver, "workers")
    for page in ("running", "schedules"):
        driver.get(f"{writable.base}/{page}")
        assert driver.find_element(By.ID, page).is_displayed()
        shot(driver, page)


def test_with_a_token_a_stranger_sees_only_sign_in_and_ended_sessions_are_refused(
    chromium, dashboard, poel_conn
):
    """Each page sends a stranger to sign in; a session expired on the server, signed out,
    or made under a previous token is refused the same way."""
    from selenium.webdriver.common.by import By

    job_id = failed_job(poel_conn)
    closed = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    driver = chromium
    pages = ("/", "/jobs", "/jobs?state=failed", f"/jobs/{job_id}", "/running", "/schedules")
    for path in (*pages, "/workers", "/audit", "/nowhere"):
        driver.get(closed.base + path)
        assert at_sign_in(driver, closed.base, path), (path, driver.current_url)
        assert "test.fail" not in driver.page_source and "ValueError" not in driver.page_source
        assert driver.find_elements(By.CSS_SELECTOR, "header a[href='/jobs']") == []
    shot(driver, "stranger")

    # Signing in leads back to the page asked for.
    sign_in(driver)
    assert driver.current_url == f"{closed.base}/nowhere"  # a 404 page, signed in
    driver.get(f"{closed.base}/jobs/{job_id}")
    assert driver.find_element(By.ID, "retry").is_displayed()

    # Expired on the server: the browser still holds its cookie, and is refused.
    poel_conn.execute("UPDATE poel.dashboard_sessions SET expires_at = now()")
    driver.get(f"{closed.base}/jobs/{job_id}")
    assert at_sign_in(driver, closed.base, f"/jobs/{job_id}")
    shot(driver, "expired")

    # Signed out: a copy of the cookie taken before is refused.
    sign_in(driver)
    kept = driver.get_cookie("poel_dashboard")
    assert kept["httpOnly"] and kept["sameSite"] == "Strict"
    driver.find_element(By.CSS_SELECTOR, "#signout button").click()
    wait(driver, lambda d: d.find_elements(By.ID, "signin"), "the sign-in page")
    assert driver.get_cookie("poel_dashboard") is None
    driver.add_cookie({"name": "poel_dashboard", "value": kept["value"], "path": "/"})
    driver.get(closed.base + "/audit")
    assert at_sign_in(driver, closed.base, "/audit")
    shot(driver, "signed-out")

    # A session from before the token changed: another dashboard on the same database with
    # a new token gets the same cookie (cookies do not tell ports apart) and refuses it.
    sign_in(driver)
    assert driver.get_cookie("poel_dashboard") is not None
    renewed = dashboard(POEL_DASHBOARD_TOKEN="another-long-token-9876543210")
    driver.get(renewed.base + "/workers")
    assert at_sign_in(driver, renewed.base, "/workers")
    sign_in(driver, token="another-long-token-9876543210")
    assert driver.current_url == f"{renewed.base}/workers"
    shot(driver, "new-token")


def test_a_diamond_workflow_is_drawn_with_its_states_arrows_and_links(
    chromium, dashboard, poel_dsn
):
    """The picture of a diamond (a -> b, c -> d; a succeeded, b failed, c running, d
    cancelled): a box a step, coloured and labelled by state, laid out in layers, an arrow
    a dependency, each box a link to its job, whose page links back."""
    from selenium.webdriver.common.by import By

    from poel_host import Queue

    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        workflow_id, jobs = ended_diamond(queue, error=f"ValueError: {SCRIPT}")
    driver = chromium
    base = dashboard().base
    driver.get(f"{base}/workflows")
    driver.find_element(By.CSS_SELECTOR, f"#workflows a[href='/workflows/{workflow_id}']").click()
    wait(driver, lambda d: d.find_elements(By.ID, "graph"), "the workflow's page")
    assert driver.title == f"Workflow {workflow_id} · Poel"  # the error's script did not run
    assert text_of(driver, "state") == "failed" and text_of(driver, "failed-step") == "b"

    nodes = {
        n.get_dom_attribute("data-step"): n
        for n in driver.find_elements(By.CSS_SELECTOR, "svg#graph a.node")
    }
    assert sorted(nodes) == ["a", "b", "c", "d"]
    states = {name: n.get_dom_attribute("data-state") for name, n in nodes.items()}
    assert states == {"a": "succeeded", "b": "failed", "c": "running", "d": "cancelled"}
    for name, n in nodes.items():
        assert n.get_dom_attribute("href") == f"/jobs/{jobs[name]}"
        assert name in n.text and states[name] in n.text, n.text  # labelled, not just coloured
        assert n.is_displayed()
    assert "ValueError: <script>" in nodes["b"].text  # the error, as text, in b's box
    fills = {
        name: n.find_element(By.TAG_NAME, "rect").get_dom_attribute("fill")
        for name, n in nodes.items()
    }
    assert len(set(fills.values())) == 4  # a colour a state
    x = {name: n.rect["x"] for name, n in nodes.items()}
    y = {name: n.rect["y"] for name, n in nodes.items()}
    assert x["a"] < x["b"] == x["c"] < x["d"]  # layers, left to right
    assert y["b"] < y["c"] and y["a"] == y["d"]
    edges = {
        (e.get_dom_attribute("data-from-step"), e.get_dom_attribute("data-to-step"))
        for e in driver.find_elements(By.CSS_SELECTOR, "svg#graph path.edge")
    }
    assert edges == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    rows = driver.find_elements(By.CSS_SELECTOR, "#steps tr")
    assert [r.text.split()[0] for r in rows[1:]] == ["a", "b", "c", "d"]
    shot(driver, "workflow")

    nodes["b"].click()  # the box is a link to the step's job
    wait(driver, lambda d: d.current_url == f"{base}/jobs/{jobs['b']}", "b's job page")
    assert text_of(driver, "state") == "failed"
    driver.find_element(By.CSS_SELECTOR, "#workflow a").click()
    wait(driver, lambda d: d.current_url == f"{base}/workflows/{workflow_id}", "the way back")
