"""``GET /metrics`` of a real ``poel-host serve``, parsed with prometheus_client's own parsers.

Job durations and jobs finished by type and outcome, claims, executor capacity, the
lease keeper's counters, and queue depths by queue and type (measured by the worker every
POEL_QUEUE_METRICS_INTERVAL_S from the database, for every job type, its own or not).
"""

from __future__ import annotations

import datetime as dt
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.process


def scrape(worker, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(worker.url("/metrics"))
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (sample name, sorted labels) -> value; the families' types checked."""
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def test_metrics_parse_and_count_jobs_claims_capacity_and_queue_depths(
    serve, poel_queue, poel_conn, wait_sql, wait_for
):
    # Jobs no worker here runs (an unknown type on another queue), waiting for a minute.
    a_minute_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    waiting = [
        poel_queue.enqueue(
            "other.kind", {"n": i}, queue="elsewhere", run_at=a_minute_ago, allow_unknown=True
        )
        for i in range(3)
    ]
    poel_queue.enqueue("other.kind", {"n": 9}, queue="elsewhere", delay=3600, allow_unknown=True)
    worker = serve(POEL_QUEUE_METRICS_INTERVAL_S=0.2)
    ok = [poel_queue.enqueue("test.record", {"key": str(i)}) for i in range(3)]
    failing = poel_queue.enqueue("test.fail", {"key": "f"}, max_attempts=2)
    wait_sql(
        "SELECT count(*) = 4 FROM poel.jobs"
        " WHERE id = ANY(%s) AND state IN ('succeeded', 'failed')",
        [[*ok, failing]],
    )

    content_type, text = scrape(worker)
    assert content_type.startswith("text/plain")
    found = samples(text)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["poel_jobs_finished"] == "counter"
    assert families["poel_job_duration_seconds"] == "histogram"
    assert families["poel_claim_duration_seconds"] == "histogram"
    assert families["poel_queue_depth"] == "gauge"

    # A run is counted before its outcome is written, so the rows above imply the counts.
    finished = "poel_jobs_finished_total"
    assert value(found, finished, job_type="test.record", outcome="succeeded") == 3
    assert value(found, finished, job_type="test.fail", outcome="retry") == 1
    assert value(found, finished, job_type="test.fail", outcome="failed") == 1
    durations = "poel_job_duration_seconds"
    assert value(found, f"{durations}_count", job_type="test.record", outcome="succeeded") == 3
    assert (
        value(found, f"{durations}_bucket", job_type="test.record", outcome="succeeded", le="+Inf")
        == 3
    )
    assert 0 < value(found, f"{durations}_sum", job_type="test.record", outcome="succeeded") < 5
    assert value(found, "poel_jobs_claimed_total", executor="greenlet") == 5  # 3 + 2 attempts
    assert value(found, "poel_claim_duration_seconds_count", executor="greenlet") >= 2
    assert value(found, "poel_executor_capacity", executor="greenlet") == 10
    assert value(found, "poel_executor_busy", executor="greenlet") == 0
    assert value(found, "poel_worker_concurrency") == 10
    assert value(found, "poel_worker_draining") == 0
    assert value(found, "poel_jobs_running") == 0
    assert value(found, "poel_lease_renewal_failures_total") == 0
    assert value(found, "poel_event_loop_blocks_total") == 0

    # Queue depths: the three due jobs of the other type (not the future one), a minute old.
    def depth() -> float | None:
        found = samples(scrape(worker)[1])
        return found.get(("poel_queue_depth", (("job_type", "other.kind"), ("queue", "elsewhere"))))

    assert wait_for(lambda: depth() == 3, what="the depth of the other queue")
    age = value(
        samples(scrape(worker)[1]),
        "poel_queue_oldest_age_seconds",
        queue="elsewhere",
        job_type="other.kind",
    )
    assert 60 <= age < 120
    # Emptied, the queue's gauge goes to 0 rather than vanishing.
    poel_conn.execute("UPDATE poel.jobs SET state = 'cancelled' WHERE id = ANY(%s)", [waiting])
    wait_for(lambda: depth() == 0, what="the depth back to 0")

    # OpenMetrics, when the scraper asks for it.
    content_type, text = scrape(worker, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(text)}
    assert {"poel_jobs_finished", "poel_job_duration_seconds", "poel_queue_depth"} <= names
    assert worker.stop() == 0


def test_a_claim_in_flight_is_not_counted_as_running(poel_settings, poel_plugins, poel_green):
    # An idle worker scraped while a claim is in flight read as busy with the claim's
    # limit (the slots it holds): /metrics counts jobs, not reservations.
    from poel_host.logs import get_logger
    from poel_host.worker import Worker
    from poel_host.worker.readings import gauges, lanes

    worker = Worker(poel_settings, poel_plugins, log=get_logger())
    worker.open()  # pools and services, none started
    try:
        lane = worker.producer.lanes[0]
        lane.slots.reserve(lane.batch)
        assert len(lane.slots) == lane.batch
        readings = lanes(worker)
        assert readings[0].executor == lane.executor == "greenlet"
        assert [r.busy for r in readings] == [0] * len(readings)
        assert gauges(worker)["poel_jobs_running"][1] == 0
        lane.slots.unreserve(lane.batch)
    finally:
        worker.close()
