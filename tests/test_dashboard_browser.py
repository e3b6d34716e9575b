"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium; ``.ci/run`` installs them), against a real ``poel-host dashboard`` and
real ``serve`` processes; run once, in ``tox -e browser``. Each page's screenshot is saved
under ``artifacts/dashboard/`` (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_dashboard import SCRIPT, TOKEN, failed_job

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
    driver.get(writable.base + "/login")
    driver.find_element(By.NAME, "name").send_keys("ada")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    shot(driver, "login")
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    # A click does not wait for the page it loads: wait for the signed-in overview.
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "header .who button"), "sign-in")
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
