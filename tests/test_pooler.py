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
from urllib.parse import SplitResult, urlsplit, urlunsplit

import psycopg
import pytest

pytestmark = pytest.mark.process

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tcp_server(dsn: str) -> SplitResult:
    """The test server's URL, or a skip: PgBouncer reaches it over TCP (the embedded test
    server listens on a private Unix socket only), and must be installed."""
    server = urlsplit(dsn)
    if not server.hostname:
        pytest.skip("needs a test server on TCP, not the embedded one's private socket")
    if not os.path.exists(PGBOUNCER):
        message = "needs Debian's pgbouncer package (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server


@pytest.fixture
def pgbouncer_dsn(poel_dsn: str, wait_for) -> Iterator[str]:
    """The test database through a PgBouncer in transaction mode (stopped afterwards)."""
    server = _tcp_server(poel_dsn)
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


# Round robin: consecutive transactions on other server connections ----------------------


def _pgbouncer_version() -> tuple[int, ...]:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    for word in words:
        parts = word.split(".")
        if len(parts) >= 2 and all(part.isdigit() for part in parts):
            return tuple(int(part) for part in parts)
    return (0,)


@pytest.fixture
def round_robin_pgbouncer_dsn(poel_dsn: str, wait_for) -> Iterator[str]:
    """The test database through a PgBouncer in transaction mode that hands consecutive
    transactions to different server connections (``server_round_robin``), with at least
    two of them open: a statement prepared on one connection is not found on the next, as
    behind Supabase's pooler or any busy PgBouncer."""
    server = _tcp_server(poel_dsn)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="poel-pgbouncer-"))
    folder.chmod(0o777)
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    # PgBouncer 1.21+ can track protocol-level prepared statements itself; that is off here
    # (and does not exist before 1.21), so the test shows what the client sends.
    tracking = "max_prepared_statements = 0\n" if _pgbouncer_version() >= (1, 21) else ""
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmin_pool_size = 3\n"
        "server_round_robin = 1\nmax_client_conn = 100\n"
        f"{tracking}"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dsn = urlunsplit(server._replace(netloc=f"postgres@127.0.0.1:{port}"))

    def accepting() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(accepting, timeout=10, what="pgbouncer listening")
    # Three transactions at once open three server connections, which PgBouncer keeps
    # (server_idle_timeout): from then on its round robin spreads transactions over them.
    held = [psycopg.connect(dsn, autocommit=False) for _ in range(3)]
    try:
        backends = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in held}
        assert len(backends) == 3
        for conn in held:
            conn.commit()  # a client leaving mid-transaction would cost its server connection
    finally:
        for conn in held:
            conn.close()
    yield dsn
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def test_no_server_side_prepared_statements_behind_a_round_robin_pooler(
    serve, round_robin_pgbouncer_dsn, poel_queue, poel_conn, wait_sql
):
    worker = serve(
        DATABASE_URL=round_robin_pgbouncer_dsn, POEL_POOLER="transaction", WORKER_CONCURRENCY=4
    )
    # psycopg prepares a statement on the server from its sixth execution on a connection.
    health = [worker.http("/health") for _ in range(15)]
    unhealthy = [(answer.status, answer.body) for answer in health if answer.status != 200]

    count = 15
    job_id = poel_queue.enqueue("test.fanout", {"key": "f", "count": count})
    wait_sql(
        "SELECT state IN ('succeeded', 'failed') FROM poel.jobs WHERE id = %s",
        [job_id],
        timeout=15,
    )
    fanout = poel_conn.execute(
        "SELECT state::text AS state, last_error FROM poel.jobs WHERE id = %s", [job_id]
    ).fetchone()
    follow_ups = poel_conn.execute(
        "SELECT count(DISTINCT payload->>'key') AS n FROM poel.jobs WHERE job_type = 'test.record'"
    ).fetchone()["n"]

    problems = [f"GET /health answered {status}: {body}" for status, body in unhealthy]
    if (fanout["state"], fanout["last_error"]) != ("succeeded", None):
        problems.append(f"the job calling ctx.enqueue {fanout['state']}: {fanout['last_error']}")
    if follow_ups != count:
        problems.append(f"{follow_ups} of {count} follow-up jobs enqueued")
    assert not problems, "\n".join(problems)
    wait_sql(
        "SELECT count(*) = %s FROM poel.jobs WHERE job_type = 'test.record'"
        " AND state = 'succeeded'",
        [count],
        timeout=15,
    )
    assert worker.stop() == 0
