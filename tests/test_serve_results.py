"""Results and progress through a real ``poel-host serve`` (issue 19), one test per
executor: a handler's progress is written while it runs (token-matched, about once a
second however often it reports), seen by ``Queue.get`` and ``poel-host jobs show``, and
its return value comes back from ``Queue.result``, which waits on the outcome's NOTIFY.
"""

from __future__ import annotations

import json
import time

import pytest

from poel_host import JobFailed, Queue

pytestmark = pytest.mark.process

PLUGINS = "poel-testresults"
FLOOD = 10_000

# Every write of a running job's progress, counted by a trigger (finishes are not counted:
# they write a finished row).
COUNT_WRITES = """
CREATE TABLE public.progress_writes (job_id bigint, progress float8, message text,
                                     at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION public.count_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.progress_writes (job_id, progress, message)
    VALUES (NEW.id, NEW.progress, NEW.progress_message);
    RETURN NEW;
END $$;
CREATE TRIGGER count_progress AFTER UPDATE OF progress ON poel.jobs
    FOR EACH ROW WHEN (NEW.state = 'running') EXECUTE FUNCTION public.count_progress();
"""


@pytest.mark.parametrize("executor", ["greenlet", "thread", "process"])
def test_progress_while_running_then_the_result(
    serve, poel_dsn, poel_conn, poel_cli, wait_sql, tmp_path, executor
):
    poel_conn.execute(COUNT_WRITES)
    serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=2)
    release = tmp_path / "release"
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        job_id = queue.enqueue(
            f"results.{executor}",
            {
                "steps": [[0.5, "half way"]],
                "flood": FLOOD,
                "hold_until": str(release),
                "returns": {"executor": executor, "items": [1, 2, 3]},
            },
        )
        # The flood's last report is written while the handler still runs.
        wait_sql(
            "SELECT state = 'running' AND progress_message = %s AS seen FROM poel.jobs"
            " WHERE id = %s",
            [f"flood {FLOOD - 1}", job_id],
            timeout=20,
        )
        running = queue.get(job_id)
        assert running["state"] == "running"
        assert running["progress"] == pytest.approx((FLOOD - 1) / FLOOD)
        shown = poel_cli("jobs", "show", str(job_id), DATABASE_URL=poel_dsn)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["progress_message"] == f"flood {FLOOD - 1}"

        started = time.monotonic()
        release.touch()
        assert queue.result(job_id, timeout=30) == {"executor": executor, "items": [1, 2, 3]}
        assert time.monotonic() - started < 10  # woken by the outcome, not the deadline

    writes = poel_conn.execute(
        "SELECT count(*) AS n, extract(epoch FROM max(at) - min(at)) AS span"
        " FROM public.progress_writes WHERE job_id = %s",
        [job_id],
    ).fetchone()
    # 10,001 reports: a write a second at most (one more for the pass that straddles).
    assert 1 <= writes["n"] <= (writes["span"] or 0) + 2
    finished = poel_conn.execute(
        "SELECT state::text, progress, progress_message FROM poel.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert finished["state"] == "succeeded"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_an_unstorable_result_fails_its_job_in_every_executor(serve, poel_dsn, executor):
    serve(POEL_LOAD_PLUGINS=PLUGINS, POEL_PROCESSES=1, POEL_THREADS=2)
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as queue:
        bad = queue.enqueue(f"results.{executor}", {"make": "nan"})
        good = queue.enqueue(f"results.{executor}", {"returns": "fine"})
        with pytest.raises(JobFailed, match="Out of range float values"):
            queue.result(bad, timeout=30)
        assert queue.result(good, timeout=30) == "fine"
