"""Finished jobs leave the hot table (issue 18, migration 0013): each worker's archiver
moves them into ``jobs_history`` (succeeded and cancelled into partitions by finish time,
failed into ``jobs_dead``), every reader finds them there, retention drops whole
partitions, and a dead job retried comes back to the jobs table.
"""

from __future__ import annotations

import gevent
import pytest

from poel_host.database import make_pool
from poel_host.errors import PoelError
from poel_host.store import Store
from poel_host.worker.archiver import Archiver, partition_width_s
from poel_host.worker.pruner import Pruner

pytestmark = pytest.mark.process


class Log:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def _keep(self, msg: str, **fields) -> None:
        self.lines.append((msg, fields))

    debug = info = warning = error = _keep


def where(conn, job_id: int) -> tuple[str | None, str | None]:
    """(the table the job is in, its state)."""
    row = conn.execute(
        "SELECT tableoid::regclass::text AS t, state::text AS state FROM poel.jobs WHERE id = %s"
        " UNION ALL SELECT tableoid::regclass::text, state::text FROM poel.jobs_history"
        " WHERE id = %s",
        [job_id, job_id],
    ).fetchone()
    return (row["t"], row["state"]) if row else (None, None)


def finished_rows(conn, n: int, *, state: str = "succeeded", hours_ago: float = 0) -> list[int]:
    """``n`` jobs finished ``hours_ago``, in the jobs table, as a worker leaves them."""
    rows = conn.execute(
        "INSERT INTO poel.jobs (job_type, state, attempts, started_at, finished_at, updated_at)"
        " SELECT 'test.noop', %s::poel.job_state, 1, t, t, t FROM generate_series(1, %s),"
        " (SELECT now() - %s * interval '1 hour' AS t) AS x RETURNING id",
        [state, n, hours_ago],
    ).fetchall()
    return [r["id"] for r in rows]


def test_finished_jobs_are_archived_and_found_where_they_went(
    serve, poel_queue, poel_conn, poel_cli, poel_dsn, wait_sql
):
    serve(POEL_ARCHIVE_AFTER_S=0)
    done = poel_queue.enqueue("test.noop", {"key": "done"})
    dead = poel_queue.enqueue("test.fail", {"key": "dead"}, max_attempts=1)
    cancelled = poel_queue.enqueue("test.noop", {"key": "later"}, delay=3600)
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s",
        [cancelled],
    )
    wait_sql(
        "SELECT count(*) = 3 FROM poel.jobs_history WHERE id = ANY(%s)",
        [[done, dead, cancelled]],
        timeout=15,
    )
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 0
    assert where(poel_conn, done)[1] == "succeeded"
    assert where(poel_conn, done)[0].startswith("poel.jobs_done_")
    assert where(poel_conn, cancelled)[0].startswith("poel.jobs_done_")
    assert where(poel_conn, dead) == ("poel.jobs_dead", "failed")
    # Every reader finds them: the view, the CLI, the store.
    states = poel_conn.execute(
        "SELECT id, state::text AS s FROM poel.all_jobs WHERE id = ANY(%s)",
        [[done, dead, cancelled]],
    ).fetchall()
    assert {r["id"]: r["s"] for r in states} == {
        done: "succeeded",
        dead: "failed",
        cancelled: "cancelled",
    }
    shown = poel_cli("jobs", "show", str(dead), DATABASE_URL=poel_dsn).stdout
    assert "failed" in shown
    listed = poel_cli("jobs", "list", "--state", "failed", DATABASE_URL=poel_dsn).stdout
    assert str(dead) in listed
    stats = poel_cli("jobs", "stats", DATABASE_URL=poel_dsn).stdout
    assert "succeeded" in stats and "failed" in stats
    found = poel_queue.get(dead)
    assert found is not None and (found["state"], found["attempts"]) == ("failed", 1)
    assert "always fails" in found["last_error"]
    assert poel_queue.get(done)["state"] == "succeeded"
    assert poel_queue.get(10**12) is None
    # A retried dead job is queued again, back in the jobs table, and runs.
    assert poel_queue.retry(dead) is True
    assert where(poel_conn, dead)[0] == "poel.jobs"


def test_a_dead_job_retried_comes_back_to_the_jobs_table_unless_its_key_is_taken(poel_conn):
    store = Store("poel")
    [job_id] = finished_rows(poel_conn, 1, state="failed")
    poel_conn.execute("UPDATE poel.jobs SET unique_key = 'k' WHERE id = %s", [job_id])
    assert (
        store.archive_finished(after_s=0, succeeded_hours=24, batch=10, connection=poel_conn) == 1
    )
    assert where(poel_conn, job_id) == ("poel.jobs_dead", "failed")

    # A live job holds the key: the dead one stays where it is.
    live = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, unique_key) VALUES ('test.noop', 'k') RETURNING id"
    ).fetchone()["id"]
    with pytest.raises(PoelError, match="holds its unique_key"):
        store.retry_job(job_id, connection=poel_conn)
    assert where(poel_conn, job_id) == ("poel.jobs_dead", "failed")

    poel_conn.execute("DELETE FROM poel.jobs WHERE id = %s", [live])
    assert store.retry_job(job_id, connection=poel_conn) is True
    assert where(poel_conn, job_id) == ("poel.jobs", "queued")
    row = poel_conn.execute(
        "SELECT attempts, ready, unique_key FROM poel.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert (row["attempts"], row["ready"], row["unique_key"]) == (0, True, "k")


def test_archivers_racing_move_each_job_once(poel_dsn, poel_conn, poel_settings):
    ids = finished_rows(poel_conn, 5000)
    pool = make_pool(poel_dsn, name="archivers", min_size=4, max_size=4)
    try:
        store = Store("poel", pool)
        settings = poel_settings.model_copy(update={"archive_after_s": 0})
        archivers = [Archiver(store, settings, log=Log()) for _ in range(4)]
        archivers[0].make_partitions(force=True)
        greenlets = [gevent.spawn(a.archive) for a in archivers]
        gevent.joinall(greenlets, timeout=60, raise_error=True)
    finally:
        pool.close()
    assert sum(g.value for g in greenlets) == 5000
    counts = poel_conn.execute(
        "SELECT (SELECT count(*) FROM poel.jobs) AS live,"
        " (SELECT count(*) FROM poel.jobs_history) AS kept,"
        " (SELECT count(DISTINCT id) FROM poel.jobs_history WHERE id = ANY(%s)) AS distinct_ids",
        [ids],
    ).fetchone()
    assert counts == {"live": 0, "kept": 5000, "distinct_ids": 5000}
    # Into the partition of their finish hour, none into the default one.
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs_done_default").fetchone() == {
        "n": 0
    }


def test_retention_drops_whole_partitions_and_prunes_the_rest_row_by_row(poel_conn, poel_settings):
    store = Store("poel")
    settings = poel_settings.model_copy(
        update={"archive_after_s": 0, "retain_succeeded_hours": 24, "retain_failed_hours": 48}
    )
    assert [partition_width_s(h) for h in (0.01, 0.02, 1, 24, 168)] == [60, 60, 900, 3600, 86400]
    recent = finished_rows(poel_conn, 10, hours_ago=2)
    old = finished_rows(poel_conn, 10, hours_ago=30)  # past 24 h
    dead_recent = finished_rows(poel_conn, 3, state="failed", hours_ago=30)
    dead_old = finished_rows(poel_conn, 3, state="failed", hours_ago=50)  # past 48 h
    # Partitions back to 36 hours ago (as if retention had been longer), then archive.
    store.make_done_partitions(back_s=36 * 3600, width_s=3600, ahead=3, connection=poel_conn)
    archived = store.archive_finished(
        after_s=0, succeeded_hours=36, batch=100, connection=poel_conn
    )
    assert archived == 26

    def partitions() -> int:
        return poel_conn.execute(
            "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'poel.jobs_done'::regclass"
        ).fetchone()["n"]

    before = partitions()
    pruner = Pruner(_OnConnection(store, poel_conn), settings, log=Log())  # type: ignore[arg-type]
    pruner.prune()
    after = partitions()
    assert before - after >= 11  # the hours from 36 to 25 ago (and the default stays)
    kept = {r["id"] for r in poel_conn.execute("SELECT id FROM poel.all_jobs").fetchall()}
    assert set(recent) <= kept and set(dead_recent) <= kept
    assert not (set(old) & kept) and not (set(dead_old) & kept)


class _OnConnection:
    """A store whose every method runs on one connection (the test's)."""

    def __init__(self, store: Store, conn) -> None:
        self._store, self._conn = store, conn

    def __getattr__(self, name: str):
        method = getattr(self._store, name)
        return lambda **kw: method(**kw, connection=self._conn)


def test_the_dashboard_shows_archived_jobs(dashboard, poel_conn):
    store = Store("poel")
    [dead] = finished_rows(poel_conn, 1, state="failed")
    [done] = finished_rows(poel_conn, 1)
    store.make_done_partitions(back_s=3600, width_s=3600, ahead=1, connection=poel_conn)
    assert store.archive_finished(after_s=0, succeeded_hours=24, batch=10, connection=poel_conn)
    assert where(poel_conn, dead)[0] == "poel.jobs_dead"
    assert where(poel_conn, done)[0].startswith("poel.jobs_done_")
    browser = dashboard()
    failed_table = browser.get("/").text.split('id="failed"')[1]
    assert "test.noop" in failed_table and '<td class="n">1</td>' in failed_table
    for job_id, state in ((dead, "failed"), (done, "succeeded")):
        page = browser.get(f"/jobs/{job_id}")
        assert page.status == 200 and state in page.text
    assert f'href="/jobs/{dead}"' in browser.get("/jobs?state=failed").text
    listing = browser.get("/jobs").text
    assert f'href="/jobs/{dead}"' in listing and f'href="/jobs/{done}"' in listing
