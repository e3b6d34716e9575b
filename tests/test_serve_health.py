"""The HTTP app of ``poel-host serve``: /health through a database outage, /plugins, and
read-only endpoints. Secrets never show in answers or logs."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = pytest.mark.process

PASSWORD = "s3cret-pa55word"


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with a password (the test server trusts local connections and ignores it)."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_health_reports_a_database_outage_and_the_recovery(
    serve, poel_dsn, database_name, cut, wait_for, poel_queue, wait_sql
):
    worker = serve(DATABASE_URL=with_password(poel_dsn, PASSWORD))

    healthy = worker.http("/health")
    assert healthy.status == 200
    assert set(healthy.body) == {"status", "timestamp", "service", "environment"}
    assert healthy.body["status"] == "healthy"
    assert healthy.body["service"] == "poel-worker"
    assert healthy.body["environment"] == "development"
    stamp = dt.datetime.fromisoformat(healthy.body["timestamp"])
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60

    cut.allow(database_name, False)
    down = wait_for(
        lambda: (answer := worker.http("/health")).status == 503 and answer,
        timeout=10,
        what="/health to answer 503 while the database refuses connections",
    )
    assert down.body["status"] == "unhealthy"
    assert down.body["service"] == "poel-worker"
    assert "database" in down.body["reason"]

    assert set(down.body) == {"status", "timestamp", "service", "environment", "reason"}

    cut.allow(database_name, True)
    up = wait_for(
        lambda: (answer := worker.http("/health")).status == 200 and answer,
        timeout=15,
        what="/health to answer 200 again once the database is back",
    )
    assert up.body["status"] == "healthy"

    # The worker itself recovered too: it runs a job enqueued after the outage.
    job_id = poel_queue.enqueue("test.record", {"key": "after"})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=15)

    answers = [down.text, up.text, worker.http("/plugins").text]
    assert worker.stop() == 0
    for text in [*answers, worker.output(), "\n".join(worker.stdout)]:
        assert PASSWORD not in text


def test_plugins_lists_the_loaded_plugin_and_the_http_app_is_read_only(serve):
    worker = serve()
    answer = worker.http("/plugins")
    assert answer.status == 200
    assert answer.body["failed"] == []
    (plugin,) = answer.body["plugins"]
    assert plugin["name"] == "poel-testjobs"
    assert plugin["distribution"] == "poel-testjobs"
    assert plugin["version"]
    jobs = {job["type"]: job for job in plugin["jobs"]}
    assert set(jobs) >= {
        "test.noop",
        "test.record",
        "test.flaky",
        "test.fail",
        "test.sleep",
        "test.slow_query",
    }
    flaky = jobs["test.flaky"]
    assert (flaky["queue"], flaky["max_attempts"], flaky["timeout"]) == ("default", 3, None)
    assert flaky["schema"]["type"] == "object"
    assert flaky["schema"]["required"] == ["fail_times"]
    assert set(flaky["schema"]["properties"]) == {"key", "fail_times"}
    slow = jobs["test.slow_query"]
    assert (slow["max_attempts"], slow["timeout"]) == (1, 1)
    assert all("schedule" in job for job in jobs.values())

    # Every endpoint is read-only.
    for path in ("/health", "/plugins", "/metrics"):
        for method in ("POST", "PUT", "DELETE"):
            answer = worker.http(path, method=method)
            assert answer.status == 405, (method, path, answer.text)
    assert worker.http("/nowhere").status == 404
