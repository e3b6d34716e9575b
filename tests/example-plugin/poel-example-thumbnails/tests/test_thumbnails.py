"""Tests of the example plugin with the fixtures poel-host ships (a real PostgreSQL)."""

import pytest
from poel_example_thumbnails.plugin import MakeThumbnail, make_thumbnail

from poel_host import InvalidPayload, JobCancelled


def test_makes_a_thumbnail_and_enqueues_the_notice(run_job, poel_conn, assert_enqueued):
    result = run_job("thumbnails.make", {"image_id": 7, "width": 256})

    assert result.state == "succeeded"
    row = poel_conn.execute("SELECT id, width, height FROM example_thumbnails").fetchone()
    assert (row["width"], row["height"]) == (256, 128)
    assert_enqueued("thumbnails.notify", {"image_id": 7, "thumbnail_id": row["id"]}, count=1)


def test_running_it_twice_makes_one_thumbnail(run_job, poel_conn, assert_enqueued):
    run_job("thumbnails.make", {"image_id": 7})
    second = run_job("thumbnails.make", {"image_id": 7})

    assert second.state == "succeeded"
    assert "thumbnail exists already" in [entry["event"] for entry in second.logs]
    count = poel_conn.execute("SELECT count(*) AS n FROM example_thumbnails").fetchone()
    assert count["n"] == 1
    assert_enqueued("thumbnails.notify", count=1)


def test_the_notice_runs(run_job):
    result = run_job("thumbnails.notify", {"image_id": 7, "thumbnail_id": 1})

    assert result.state == "succeeded"
    assert "thumbnail ready" in [entry["event"] for entry in result.logs]


def test_a_bad_payload_is_refused(poel_queue):
    with pytest.raises(InvalidPayload):
        poel_queue.enqueue("thumbnails.make", {"image_id": 7, "width": 5})


def test_the_handler_with_a_context(poel_context, assert_enqueued):
    make_thumbnail(MakeThumbnail(image_id=9), poel_context)

    assert poel_context.events == ["thumbnail made"]
    assert_enqueued("thumbnails.notify", {"image_id": 9})


def test_a_cancelled_job_stops(poel_context, assert_enqueued):
    poel_context.cancel()

    with pytest.raises(JobCancelled):
        make_thumbnail(MakeThumbnail(image_id=9), poel_context)
    assert_enqueued("thumbnails.notify", count=0)
