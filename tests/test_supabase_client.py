"""``ctx.supabase``: the supabase-py client handlers get, against a local stand-in for
Supabase's REST and Storage endpoints (the ``fake_supabase`` fixture of conftest.py).

What it must show: one client per process (serve's greenlet and thread jobs share one,
each child of the process executor has its own), green under gevent (a hundred greenlet
jobs waiting on Supabase at once take one request's time), every request carrying the
service role key as ``apikey`` and ``Authorization: Bearer``, the key nowhere else (logs,
errors, tracebacks, reprs), a clear failure naming what to set when it is not configured,
and the test kit pointing it at a test server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from poel_host import JobRequest
from poel_host.supabase_client import SupabaseNotConfigured, client_for

PLUGIN = "poel-testsupabase"
# Distinctive, so that a search of every log line and stored error cannot miss it.
KEY = "sb-test-service-role-" + os.urandom(12).hex()
DELAY = 0.5


def supabase_env(fake: Any) -> dict[str, Any]:
    return {"SUPABASE_URL": fake.url, "SUPABASE_SERVICE_ROLE_KEY": KEY}


def assert_carries_the_key(request: Any) -> None:
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"


def jobs(conn: Any, ids: list[int]) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, state, last_error, errors::text AS errors, started_at, finished_at"
        " FROM poel.jobs WHERE id = ANY(%s) ORDER BY id",
        [ids],
    ).fetchall()


def finished(conn: Any, ids: list[int]) -> Any:
    rows = jobs(conn, ids)
    return rows if all(r["state"] in ("succeeded", "failed") for r in rows) else None


# Without a worker ----------------------------------------------------------------------


def test_without_the_settings_it_names_what_to_set(poel_dsn: str) -> None:
    from poel_host.settings import Settings
    from poel_host.testing import make_context

    ctx = make_context(poel_dsn, settings=Settings(_env_file=None, DATABASE_URL=poel_dsn))
    with pytest.raises(SupabaseNotConfigured) as raised:
        ctx.supabase  # noqa: B018
    message = str(raised.value)
    assert "SUPABASE_URL" in message
    assert "SUPABASE_SERVICE_ROLE_KEY" in message
    assert "\n" not in message


def test_only_the_missing_variable_is_named(poel_settings: Any, fake_supabase: Any) -> None:
    settings = poel_settings.model_copy(update={"supabase_service_role_key": None})
    with pytest.raises(SupabaseNotConfigured, match=r"not set: SUPABASE_SERVICE_ROLE_KEY\."):
        client_for(settings)


@pytest.fixture
def poel_settings_overrides(fake_supabase: Any) -> dict[str, Any]:
    """The kit's way to point ``ctx.supabase`` at a test server (see the fixture's doc):
    this module's ``poel_settings``, ``poel_context`` and ``run_job`` use ``fake_supabase``."""
    return supabase_env(fake_supabase)


def test_the_kit_points_it_at_a_test_server(poel_context: Any, fake_supabase: Any) -> None:
    fake_supabase.files[("audio", "uploads/take-1.wav")] = b"RIFF...."

    rows = poel_context.supabase.table("records").select("*").eq("id", 1).execute().data
    data = poel_context.supabase.storage.from_("audio").download("uploads/take-1.wav")

    assert rows == fake_supabase.rows
    assert data == b"RIFF...."
    select, download = fake_supabase.requests
    assert (select.method, select.path, select.query) == (
        "GET",
        "/rest/v1/records",
        "select=%2A&id=eq.1",
    )
    assert (download.method, download.path) == (
        "GET",
        "/storage/v1/object/audio/uploads/take-1.wav",
    )
    for request in fake_supabase.requests:
        assert_carries_the_key(request)
    # one client per process and settings, and no key in what a log line could show
    assert poel_context.supabase is poel_context.supabase
    for shown in (repr(poel_context), repr(poel_context.supabase), str(poel_context.settings)):
        assert KEY not in shown
    assert KEY not in repr(vars(poel_context.supabase.postgrest.session))


def test_the_kit_can_hand_a_stand_in_instead(poel_dsn: str) -> None:
    from poel_host.testing import make_context

    stand_in = object()
    assert make_context(poel_dsn, supabase=stand_in).supabase is stand_in


def test_run_job_reaches_the_test_server(run_job: Any, fake_supabase: Any) -> None:
    result = run_job("test.supabase", {"op": "update", "id": 7})

    assert result.state == "succeeded", result.error
    (request,) = fake_supabase.requests
    assert (request.method, request.path, request.query) == ("PATCH", "/rest/v1/records", "id=eq.7")
    assert json.loads(request.body) == {"processed": True}
    assert_carries_the_key(request)


def test_greenlets_and_native_threads_make_one_client_between_them(
    poel_settings: Any, fake_supabase: Any
) -> None:
    """The first uses racing from greenlets and native threads at once: one client, and
    every one of them can use it (each thread with its own connections)."""
    import gevent
    from gevent import monkey

    fake_supabase.delay = 0.2
    start_native = monkey.get_original("_thread", "start_new_thread")
    native_lock = monkey.get_original("_thread", "allocate_lock")
    settings = poel_settings.model_copy(update={"supabase_url": fake_supabase.url + "/"})
    made: list[Any] = []

    def use() -> None:
        client = client_for(settings)
        client.table("records").select("id").execute()
        made.append(client)

    done = []
    for _ in range(4):
        lock = native_lock()
        lock.acquire()

        def run(lock: Any = lock) -> None:
            try:
                use()
            finally:
                lock.release()

        start_native(run, ())
        done.append(lock)
    gevent.joinall([gevent.spawn(use) for _ in range(4)], raise_error=True)
    for lock in done:  # wait cooperatively: the server answers on this thread's hub
        while not lock.acquire(False):
            time.sleep(0.01)

    assert len(made) == 8
    assert len({id(client) for client in made}) == 1
    assert len(fake_supabase.requests) == 8


# In poel-host serve ------------------------------------------------------------------


@pytest.mark.process
def test_a_hundred_greenlet_jobs_wait_on_supabase_together(
    serve: Any, poel_queue: Any, poel_conn: Any, fake_supabase: Any, wait_for: Any
) -> None:
    fake_supabase.delay = DELAY
    ids = poel_queue.enqueue_many(JobRequest("test.supabase", {"id": n}) for n in range(100))

    serve(POEL_LOAD_PLUGINS=PLUGIN, WORKER_CONCURRENCY=100, **supabase_env(fake_supabase))
    rows = wait_for(lambda: finished(poel_conn, ids), timeout=60, what="the 100 jobs")

    assert {row["state"] for row in rows} == {"succeeded"}, rows[0]["last_error"]
    requests = fake_supabase.requests
    assert len(requests) == 100
    for request in requests:
        assert request.path == "/rest/v1/records"
        assert_carries_the_key(request)
    span = max(r.finished for r in requests) - min(r.started for r in requests)
    jobs_span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    print(
        f"max in flight {fake_supabase.max_in_flight}, requests' span {span:.2f}s, "
        f"jobs' span {jobs_span.total_seconds():.2f}s, one request {DELAY}s"
    )
    # Green: the server had them all waiting at once, not one after another (100 x 0.5 s).
    assert fake_supabase.max_in_flight >= 50
    assert DELAY <= span < 5 * DELAY


@pytest.mark.process
def test_every_executor_uses_one_client_per_process(
    serve: Any, poel_queue: Any, poel_conn: Any, fake_supabase: Any, wait_for: Any
) -> None:
    fake_supabase.delay = DELAY
    fake_supabase.files[("audio", "uploads/take-1.wav")] = b"\x00\x01audio"
    handle = serve(
        POEL_LOAD_PLUGINS=PLUGIN,
        POEL_THREADS=4,
        POEL_PROCESSES=2,
        **supabase_env(fake_supabase),
    )
    greenlets = [poel_queue.enqueue("test.supabase", {"op": "select"}) for _ in range(4)]
    threads = [poel_queue.enqueue("test.supabase_thread", {"op": "download"}) for _ in range(4)]
    processes = [
        poel_queue.enqueue("test.supabase_process", {"op": "fingerprint", "id": n})
        for n in range(4)
    ]
    ids = greenlets + threads + processes
    rows = wait_for(lambda: finished(poel_conn, ids), timeout=60, what="the jobs")

    assert {row["state"] for row in rows} == {"succeeded"}, [r["last_error"] for r in rows]
    for request in fake_supabase.requests:
        assert_carries_the_key(request)
    assert fake_supabase.paths().count("/storage/v1/object/audio/uploads/take-1.wav") == 8
    assert sorted(fake_supabase.paths("PATCH")) == ["/rest/v1/records"] * 4
    patched = [json.loads(r.body) for r in fake_supabase.requests if r.method == "PATCH"]
    assert {p["fingerprint"] for p in patched} == {hashlib.sha256(b"\x00\x01audio").hexdigest()}
    # Thread jobs ran side by side, each thread on connections of its own.
    assert fake_supabase.max_in_flight >= 4

    used = {row["jobId"]: row for row in handle.logs if row.get("msg") == "supabase client"}
    assert set(used) == set(ids)
    serve_pid = handle.pid
    in_serve = {(used[i]["pid"], used[i]["client"]) for i in greenlets + threads}
    assert in_serve == {(serve_pid, used[greenlets[0]]["client"])}  # one client in serve
    assert len({used[i]["thread"] for i in threads} - {used[greenlets[0]]["thread"]}) >= 2
    children = {used[i]["pid"] for i in processes}
    assert serve_pid not in children
    for pid in children:  # one client in each child, however many jobs it ran
        assert len({used[i]["client"] for i in processes if used[i]["pid"] == pid}) == 1


@pytest.mark.process
def test_the_key_is_in_no_log_error_or_traceback(
    serve: Any, poel_queue: Any, poel_conn: Any, fake_supabase: Any, wait_for: Any
) -> None:
    fake_supabase.fail_status = 500
    handle = serve(
        POEL_LOAD_PLUGINS=PLUGIN,
        POEL_LOG_LEVEL="debug",
        POEL_PROCESSES=1,
        **supabase_env(fake_supabase),
    )
    ids = [
        poel_queue.enqueue(job_type, {"op": op})
        for job_type in ("test.supabase", "test.supabase_thread", "test.supabase_process")
        for op in ("update", "download")
    ]
    rows = wait_for(lambda: finished(poel_conn, ids), timeout=60, what="the jobs")

    assert {row["state"] for row in rows} == {"failed"}
    assert fake_supabase.requests
    for row in rows:
        assert row["last_error"]
        assert "traceback" in row["errors"]
        assert KEY not in row["last_error"]
        assert KEY not in row["errors"]
    handle.stop()
    output = "\n".join(handle.lines + handle.stdout)
    assert "supabase client" in output
    assert KEY not in output


@pytest.mark.process
def test_serve_without_the_settings_fails_the_job_naming_them(
    serve: Any, poel_queue: Any, poel_conn: Any, wait_for: Any
) -> None:
    serve(POEL_LOAD_PLUGINS=PLUGIN, POEL_PROCESSES=1)
    ids = [
        poel_queue.enqueue("test.supabase", {}),
        poel_queue.enqueue("test.supabase_process", {}),
    ]
    rows = wait_for(lambda: finished(poel_conn, ids), timeout=60, what="the jobs")

    for row in rows:
        assert row["state"] == "failed"
        assert row["last_error"].startswith(
            "SupabaseNotConfigured: ctx.supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
        )


@pytest.mark.process
@pytest.mark.parametrize("configured", [True, False])
def test_serve_and_its_children_import_it_at_start_when_configured(
    serve: Any, poel_queue: Any, poel_conn: Any, fake_supabase: Any, wait_for: Any, configured
) -> None:
    # The first job to read ctx.supabase must not pay for the import (a second, with the
    # event loop blocked): serve and each child import it at start, but only when told
    # where Supabase is.
    handle = serve(
        POEL_LOAD_PLUGINS=PLUGIN,
        POEL_PROCESSES=1,
        **(supabase_env(fake_supabase) if configured else {}),
    )
    ids = [
        poel_queue.enqueue("test.supabase", {"op": "nothing"}),
        poel_queue.enqueue("test.supabase_process", {"op": "nothing"}),
    ]
    rows = wait_for(lambda: finished(poel_conn, ids), timeout=60, what="the jobs")
    assert {row["state"] for row in rows} == {"succeeded"}
    seen = {row["jobId"]: row for row in handle.logs if row.get("msg") == "supabase imported"}
    assert [seen[i]["imported"] for i in ids] == [configured, configured]
    assert seen[ids[0]]["pid"] == handle.pid != seen[ids[1]]["pid"]


def test_nothing_is_made_before_first_use() -> None:
    """A worker whose handlers never read ctx.supabase never imports supabase."""
    code = (
        "import sys, poel_host.jobs, poel_host.worker;"
        "print('supabase' in sys.modules, 'poel_host.supabase_client' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "False"]
