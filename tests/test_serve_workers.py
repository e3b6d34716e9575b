"""The registry of live workers, with real ``poel-host serve`` processes.

Each serve registers itself at start-up (host, pid, version, plugins, job types, capacity),
its lease keeper's heartbeat keeps the row fresh, SIGTERM marks it draining and a clean exit
removes it. A worker killed with ``kill -9`` leaves a row whose heartbeat stops: a live
worker's rescuer marks it gone after the dead one's lease, and deletes it after
``POEL_GONE_WORKERS_KEEP_S``. ``poel-host workers`` lists the registry.
"""

from __future__ import annotations

import json
import os
import signal

from poel_host import __version__

QUICK = {"POEL_LEASE_MS": 1000, "POEL_GONE_WORKERS_KEEP_S": 1}


def registry(poel_cli, poel_dsn: str) -> dict[int, dict]:
    """``poel-host workers --json``, by pid."""
    done = poel_cli("workers", "--json", DATABASE_URL=poel_dsn)
    assert done.returncode == 0, done.stderr
    return {row["pid"]: row for row in json.loads(done.stdout)}


def test_two_serves_are_listed_with_their_plugins_and_leave_on_a_clean_exit(
    serve, poel_cli, poel_dsn, poel_queue, wait_sql
):
    plain = serve()
    hooked = serve(POEL_LOAD_PLUGINS="poel-testjobs,poel-testhooks", WORKER_CONCURRENCY=7)
    rows = registry(poel_cli, poel_dsn)
    assert set(rows) == {plain.pid, hooked.pid}
    for worker in (plain, hooked):
        row = rows[worker.pid]
        assert row["status"] == "alive" and not row["draining"] and row["gone_at"] is None
        assert row["host"] == os.uname().nodename
        assert row["version"] == __version__
        assert row["owner"].startswith(f"{row['host']}:{worker.pid}:")
        assert row["heartbeat_age_s"] < 5
        assert (row["threads"], row["processes"], row["queues"]) == (None, None, None)
    assert [p["name"] for p in rows[plain.pid]["plugins"]] == ["poel-testjobs"]
    assert sorted(p["name"] for p in rows[hooked.pid]["plugins"]) == [
        "poel-testhooks",
        "poel-testjobs",
    ]
    assert all(p["version"] for p in rows[hooked.pid]["plugins"])
    assert "testhooks.probe" in rows[hooked.pid]["job_types"]
    assert "testhooks.probe" not in rows[plain.pid]["job_types"]
    assert "test.sleep" in rows[plain.pid]["job_types"]
    assert (rows[plain.pid]["concurrency"], rows[hooked.pid]["concurrency"]) == (10, 7)

    table = poel_cli("workers", DATABASE_URL=poel_dsn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["HOST", "PID", "STATUS", "VERSION"]
    hooked_line = next(line for line in lines if f" {hooked.pid} " in line)
    assert "alive" in hooked_line and "7 greenlets" in hooked_line
    assert "poel-testhooks" in hooked_line

    # A clean exit leaves the registry.
    assert hooked.stop() == 0
    assert set(registry(poel_cli, poel_dsn)) == {plain.pid}

    # Draining shows while a job finishes within the grace period.
    job_id = poel_queue.enqueue("test.sleep", {"key": "drain", "seconds": 1.5})
    wait_sql(
        "SELECT count(*) > 0 FROM poel_test_runs WHERE job_id = %s AND note = 'start'", [job_id]
    )
    plain.signal(signal.SIGTERM)
    wait_sql("SELECT draining FROM poel.workers WHERE pid = %s", [plain.pid])
    assert registry(poel_cli, poel_dsn)[plain.pid]["status"] == "draining"
    assert plain.wait_exit() == 0
    assert registry(poel_cli, poel_dsn) == {}
    assert "no worker registered" in poel_cli("workers", DATABASE_URL=poel_dsn).stdout


def test_a_killed_worker_is_marked_gone_then_removed_and_a_lost_row_comes_back(
    serve, poel_cli, poel_dsn, poel_conn, wait_sql, wait_for
):
    killed, survivor = serve(**QUICK), serve(**QUICK)
    assert set(registry(poel_cli, poel_dsn)) == {killed.pid, survivor.pid}

    killed.kill()  # SIGKILL: no clean-up of its own
    gone = survivor.wait_log("worker gone: its heartbeat stopped", pid=killed.pid)
    assert gone["owner"].startswith(f"{gone['host']}:{killed.pid}:")
    survivor.wait_log("gone worker removed from the registry", pid=killed.pid)
    assert set(registry(poel_cli, poel_dsn)) == {survivor.pid}

    # A row lost while the worker lives (found gone while it was frozen, cleaned up) is
    # written again by its next heartbeat.
    poel_conn.execute("DELETE FROM poel.workers WHERE pid = %s", [survivor.pid])
    wait_sql("SELECT count(*) = 1 FROM poel.workers WHERE pid = %s", [survivor.pid])
    # Logged once the row is committed: the line may reach us after the row is seen.
    survivor.wait_log("worker registered again: its row was gone", timeout=5)

    # With no worker left to mark it, a dead worker's stale heartbeat still shows as gone.
    survivor.kill()
    wait_for(
        lambda: registry(poel_cli, poel_dsn)[survivor.pid]["status"] == "gone",
        what="the last worker listed as gone",
    )
