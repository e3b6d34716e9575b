"""Poel behind a transaction pooler: a real PgBouncer in transaction mode, started here.

With POEL_POOLER=transaction the worker neither LISTENs nor uses server-side prepared
statements, and sets no session state on the server connections PgBouncer shares.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = pytest.mark.process

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pgbouncer_dsn(poel_dsn: str, wait_for) -> Iterator[str]:
    """The test database through a PgBouncer in transaction mode (stopped afterwards)."""
    if not os.path.exists(PGBOUNCER):
        message = "needs Debian's pgbouncer package (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = urlsplit(poel_dsn)
    port = _free_port()
    # PgBouncer refuses to run as root, so it runs as postgres, which cannot enter pytest's
    # private tmp_path: its files live in a folder of their own that postgres can use.
    folder = Path(tempfile.mkdtemp(prefix="poel-pgbouncer-"))
    folder.chmod(0o777)
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 100\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    command = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dsn = urlunsplit(server._replace(netloc=f"postgres@127.0.0.1:{port}"))

    def accepting() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(accepting, timeout=10, what="pgbouncer listening")
    yield dsn
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def test_serve_through_pgbouncer_in_transaction_mode(
    serve, pgbouncer_dsn, poel_queue, poel_conn, wait_sql
):
    worker = serve(DATABASE_URL=pgbouncer_dsn, POEL_POOLER="transaction", WORKER_CONCURRENCY=20)
    assert worker.find_log("LISTEN disabled (POEL_POOLER=transaction): polling for new jobs")
    ids = [poel_queue.enqueue("test.record", {"key": str(i)}) for i in range(200)]
    failing = poel_queue.enqueue("test.flaky", {"key": "f", "fail_times": 1})
    wait_sql(
        "SELECT count(*) = %s FROM poel.jobs WHERE id = ANY(%s) AND state = 'succeeded'",
        [len(ids) + 1, [*ids, failing]],
        timeout=30,
    )
    assert worker.http("/health").status == 200
    runs = poel_conn.execute(
        "SELECT count(*) AS n, count(DISTINCT job_id) AS d FROM poel_test_runs"
        " WHERE job_type = 'test.record'"
    ).fetchone()
    assert runs["n"] == runs["d"] == len(ids)
    assert worker.stop() == 0
    # No session state leaked onto the server connections PgBouncer shares.
    leaked = poel_conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND query ILIKE 'PREPARE%%'"
    ).fetchone()
    assert leaked["n"] == 0
