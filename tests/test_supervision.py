"""Supervised services: a background service that dies of an unexpected error is logged
with its traceback, restarted with backoff, and named by /health (503) until it runs
again; the rest of the worker goes on meanwhile."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.process

BREAK_PRUNING = """
CREATE TABLE public.prune_breaker (broken boolean NOT NULL);
INSERT INTO public.prune_breaker VALUES (true);
CREATE FUNCTION public.refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT broken FROM public.prune_breaker) THEN
        RAISE EXCEPTION 'pruning is broken on purpose';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER refuse_delete BEFORE DELETE ON poel.jobs
    FOR EACH ROW EXECUTE FUNCTION public.refuse_delete();
INSERT INTO poel.jobs (job_type, state, finished_at)
SELECT 'test.noop', 'succeeded', now() - interval '2 days' FROM generate_series(1, 10);
"""


def test_a_dead_service_is_restarted_and_named_by_health_until_it_runs_again(
    serve, poel_conn, poel_queue, wait_for, wait_sql
):
    # A trigger makes the pruner's DELETE raise an error that is not a lost connection:
    # the kind of surprise that used to end a background greenlet silently.
    poel_conn.execute(BREAK_PRUNING)
    worker = serve(POEL_LEASE_MS=1000, POEL_RETAIN_SUCCEEDED_HOURS=1)

    died = worker.wait_log("service died; restarting", service="pruner", timeout=15)
    assert "pruning is broken on purpose" in died["error"]
    assert "Traceback" in died["exception"]  # one JSON line, with the traceback in it
    down = wait_for(
        lambda: (answer := worker.http("/health")).status == 503 and answer,
        timeout=10,
        what="/health to answer 503 while the pruner is dead",
    )
    assert down.body["status"] == "unhealthy"
    assert "pruner" in down.body["reason"]
    assert "pruning is broken on purpose" in down.body["reason"]

    # The other services go on: jobs are claimed, run and recorded meanwhile.
    job_id = poel_queue.enqueue("test.record", {"key": "while-the-pruner-is-down"})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id], timeout=10)

    poel_conn.execute("UPDATE public.prune_breaker SET broken = false")
    worker.wait_log("service running again", service="pruner", timeout=20)
    assert worker.http("/health").status == 200
    wait_sql(
        "SELECT count(*) = 0 FROM poel.jobs WHERE finished_at < now() - interval '1 day'",
        timeout=10,
    )
