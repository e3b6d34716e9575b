"""What ``poel-host serve`` writes: one JSON object a line on stderr, job lines bound to
their job."""

from __future__ import annotations

import datetime as dt
import json

import pytest

pytestmark = pytest.mark.process

BASE_KEYS = {"level", "ts", "msg", "service", "environment"}
JOB_EVENTS = {"job started", "job succeeded", "job retry scheduled", "job failed"}


def test_every_line_is_json_and_job_lines_carry_the_job(serve, poel_queue, poel_conn, wait_sql):
    # debug: "job started" is logged at debug level (one info line per job is the default)
    worker = serve(POEL_ENV="production", POEL_AUTO_MIGRATE="true", POEL_LOG_LEVEL="debug")
    ok = poel_queue.enqueue("test.record", {"key": "ok"})
    failing = poel_queue.enqueue("test.fail", {"key": "bad"}, max_attempts=2)
    invalid = poel_conn.execute(
        "SELECT poel.enqueue('test.flaky', '{\"fail_times\": \"x\"}'::jsonb) AS id"
    ).fetchone()["id"]
    wait_sql(
        "SELECT count(*) = 3 FROM poel.jobs WHERE id = ANY(%s)"
        " AND state IN ('succeeded', 'failed')",
        [[ok, failing, invalid]],
    )
    assert worker.stop() == 0

    assert worker.lines, "serve wrote nothing on stderr"
    entries = []
    for line in worker.lines:
        entry = json.loads(line)  # every line, not only ours
        assert isinstance(entry, dict), line
        assert set(entry) >= BASE_KEYS, line
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert entry["service"] == "poel-worker"
        assert entry["environment"] == "production"
        assert dt.datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).tzinfo is not None
        entries.append(entry)
    assert worker.stdout == []

    job_lines = [e for e in entries if e["msg"] in JOB_EVENTS]
    for entry in job_lines:
        assert {"jobId", "jobType", "attempt"} <= set(entry), entry
    seen = {(e["jobId"], e["jobType"], e["attempt"], e["msg"]) for e in job_lines}
    assert {
        (ok, "test.record", 1, "job succeeded"),
        (failing, "test.fail", 1, "job retry scheduled"),
        (failing, "test.fail", 2, "job failed"),
        (invalid, "test.flaky", 1, "job failed"),
    } <= seen
    failed = next(e for e in job_lines if e["jobId"] == failing and e["msg"] == "job failed")
    assert failed["level"] == "error"
    assert failed["error"] == "ValueError: this job always fails"
    messages = [e["msg"] for e in entries]
    for expected in ("http listening", "worker started", "worker stopped"):
        assert expected in messages
