"""Shared fixtures for poel-host's own tests.

The database fixtures (``poel_dsn``, ``poel_queue``, ``run_job``...) come from
``poel_host.testing``, the pytest plugin Poel ships for plugin authors; this file adds
what only the host's tests need: running ``poel-host`` as a real subprocess.

- ``serve(**env)`` starts ``python -m poel_host serve`` on the test's database with a
  clean environment, waits until it listens and its worker has started, and stops it at
  teardown (SIGTERM, then SIGKILL if it does not exit).
- ``poel_cli(*args, **env)`` runs one ``python -m poel_host`` command to completion.
- ``dashboard(**env)`` starts ``python -m poel_host dashboard`` on the test's database and
  returns a :class:`Browser` (urllib with cookies) for it.
- ``fake_supabase`` is a local HTTP server answering like Supabase's REST (PostgREST) and
  Storage endpoints, recording each request (method, path, headers, timings); ``serve``
  subprocesses reach it on 127.0.0.1.
- ``wait_for(predicate)`` polls until ``predicate()`` is truthy, with a deadline;
  ``wait_sql(query)`` does the same for the first column of a query's first row.
- ``job(job_id)`` reads a job's row; ``alive(pid)`` and ``gone_within(*pids)`` tell
  whether processes serve started (children, their helpers) still run.

The test process is patched by gevent (the project opts in: ``poel_gevent = true`` in
pyproject.toml, read by ``poel_host.testing``), so the reader "threads"
below are greenlets and the pipes are cooperative: any wait here yields to them.
"""

from __future__ import annotations

import http.cookiejar
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from psycopg import sql

from poel_host.database import connection
from poel_host.testing import server_dsn

# Variables the host reads: never inherited from the environment the tests run in.
_HOST_VARIABLES = {
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "WORKER_CONCURRENCY",
    "JOB_TIMEOUT_MS",
    "HEALTH_CHECK_PORT",
    "HEALTH_CHECK_HOST",
    # read as POEL_ENV when that is unset (a Deno or Node deployment's .env)
    "DENO_ENV",
    "NODE_ENV",
}

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that, or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def clean_env(**overrides: Any) -> dict[str, str]:
    """The current environment without anything Poel reads, plus ``overrides``.

    An override of ``None`` leaves the variable unset.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _HOST_VARIABLES and not key.startswith("POEL_")
    }
    for key, value in overrides.items():
        if value is not None:
            env[key] = str(value)
    return env


@dataclass
class HttpAnswer:
    status: int
    body: Any
    text: str


@dataclass
class ServeProcess:
    """A running ``poel-host serve``: its process, its log lines and its HTTP port."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)  # every stderr line, raw
    stdout: list[str] = field(default_factory=list)
    port: int | None = None
    _readers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The stderr lines that parse as JSON objects."""
        parsed = []
        for line in list(self.lines):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                parsed.append(value)
        return parsed

    def find_log(self, msg: str, **fields: Any) -> dict[str, Any] | None:
        for entry in self.logs:
            if entry.get("msg") == msg and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        return None

    def wait_log(self, msg: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            entry = self.find_log(msg, **fields)
            if entry is None and self.proc.poll() is not None:
                pytest.fail(
                    f"poel-host serve exited ({self.proc.returncode}) before logging {msg!r}:\n"
                    + self.output()
                )
            return entry

        return wait_until(found, timeout=timeout, what=f"log line {msg!r} {fields or ''}")  # type: ignore[no-any-return]

    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, path: str) -> str:
        assert self.port is not None, "the HTTP server has not started"
        return f"http://127.0.0.1:{self.port}{path}"

    def http(self, path: str, *, method: str = "GET", timeout: float = 10.0) -> HttpAnswer:
        request = urllib.request.Request(self.url(path), method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return HttpAnswer(status, body, text)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"poel-host serve did not exit within {timeout:g}s:\n{self.output()}")
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)


def _read_lines(stream: Any, sink: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()


def spawn_host(args: list[str], env: dict[str, str], cwd: Path) -> ServeProcess:
    """Start ``python -m poel_host ARGS`` with stderr (and stdout) read in the background."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "poel_host", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    handle = ServeProcess(proc, env)
    for stream, sink in ((proc.stderr, handle.lines), (proc.stdout, handle.stdout)):
        reader = threading.Thread(target=_read_lines, args=(stream, sink), daemon=True)
        reader.start()
        handle._readers.append(reader)
    return handle


@pytest.fixture
def serve(
    poel_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServeProcess]]:
    """``serve(wait=True, **env)``: start ``poel-host serve`` on the test's database.

    The environment is clean (nothing Poel reads is inherited) with quick polling and
    retries, an ephemeral HTTP port and only the test plugin loaded; ``env`` overrides any
    of it (``None`` unsets). With ``wait`` it returns once the "http listening" and "worker
    started" lines are logged. Every process still running at teardown gets SIGTERM, then
    SIGKILL if it has not exited in time.
    """
    started: list[ServeProcess] = []
    cwd = tmp_path_factory.mktemp("serve")  # no stray .env file

    def start(*, wait: bool = True, **overrides: Any) -> ServeProcess:
        env = clean_env(
            **{
                "DATABASE_URL": poel_dsn,
                "HEALTH_CHECK_PORT": 0,
                "POEL_POLL_INTERVAL_MS": 50,
                "POEL_RETRY_BACKOFF_MS": 10,
                "POEL_LOAD_PLUGINS": "poel-testjobs",
                "POEL_SHUTDOWN_TIMEOUT_MS": 10_000,
                # Tests read a job's outcome in poel.jobs, where it stays this long once
                # finished; archiving into the history is tested with its own setting.
                "POEL_ARCHIVE_AFTER_S": 3600,
                **overrides,
            }
        )
        handle = spawn_host(["serve"], env, cwd)
        started.append(handle)
        if wait:
            listening = handle.wait_log("http listening", timeout=START_TIMEOUT_S)
            handle.port = int(listening["port"])
            handle.wait_log("worker started", timeout=START_TIMEOUT_S)
        return handle

    yield start

    for handle in started:
        handle.signal(signal.SIGTERM)
    for handle in started:
        try:
            handle.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            handle.kill()
        for reader in handle._readers:
            reader.join(timeout=5)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def poel_cli(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., CliResult]:
    """``poel_cli(*args, timeout=60, **env)``: run ``python -m poel_host ARGS`` to completion
    with a clean environment (nothing Poel reads is inherited) plus ``env``."""
    cwd = tmp_path_factory.mktemp("cli")

    def run(*args: str, timeout: float = 60.0, **overrides: Any) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "poel_host", *args],
            env=clean_env(**overrides),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    return run


def closed_port() -> int:
    """A loopback port nothing listens on: one the kernel just handed out and took back."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def closed_local_url() -> str:
    """A ``POEL_LOCAL_DATABASE_URL`` where nothing answers: how a test says "no server on
    the default address" without stopping the machine's PostgreSQL."""
    return f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=10, what="...")``: poll until truthy (see wait_until)."""
    return wait_until


@pytest.fixture
def wait_sql(poel_dsn: str) -> Callable[..., Any]:
    """``wait_sql(query, params=None, timeout=10)``: poll the test's database until the first
    column of the query's first row is truthy; return that row (a dict).

    Each poll uses a fresh connection, so it survives the database being cut off meanwhile.
    """

    def wait(query: str, params: Any = None, *, timeout: float = 10.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            with connection(poel_dsn) as conn:
                row = conn.execute(query, params).fetchone()
            return row if row and next(iter(row.values())) else None

        return wait_until(check, timeout=timeout, what=f"SQL condition: {query}")  # type: ignore[no-any-return]

    return wait


@pytest.fixture
def migrate_at_once(poel_dsn: str) -> Callable[..., list[list[str]]]:
    """``migrate_at_once(schema, plugin_migrations, n=4)``: ``n`` migrators racing on
    their own connections, as ``poel-host migrate`` run from several places at once;
    each one's list of migrations applied, shortest first."""
    import gevent

    from poel_host import migrations

    def race(schema: str, plugin: list[Any], n: int = 4) -> list[list[str]]:
        def run() -> list[str]:
            with connection(poel_dsn) as conn:
                return migrations.migrate(conn, schema, plugin)

        greenlets = [gevent.spawn(run) for _ in range(n)]
        gevent.joinall(greenlets, timeout=30, raise_error=True)
        return sorted((g.value for g in greenlets), key=len)

    return race


@pytest.fixture
def job_lease() -> Callable[[Any, int], dict[str, Any]]:
    """``job_lease(conn, job_id)``: the job's state, attempts, errors and lease, with
    ``lease_until`` (when its lease ends, as every rescuer computes it: its own expiry if
    it has one, else its worker's heartbeat plus that worker's ``stale_after_ms``) and
    ``lease_ahead`` (whether that is still ahead of ``now()``)."""

    def row(conn: Any, job_id: int) -> dict[str, Any]:
        found: dict[str, Any] = conn.execute(
            "SELECT *, lease_until > now() AS lease_ahead FROM ("
            " SELECT j.state::text AS state, j.attempts, j.errors, j.lease_owner,"
            " j.lease_expires_at, now() AS now, coalesce(j.lease_expires_at,"
            "  w.heartbeat_at + w.stale_after_ms * interval '1 millisecond') AS lease_until"
            " FROM poel.jobs AS j LEFT JOIN poel.workers AS w ON w.owner = j.lease_owner"
            " WHERE j.id = %s) AS r",
            [job_id],
        ).fetchone()
        assert found is not None, f"job {job_id} not found"
        return found

    return row


@pytest.fixture
def job(poel_conn: Any) -> Callable[[int], dict[str, Any]]:
    """``job(job_id)``: the job's row in ``poel.jobs`` (a dict), read on ``poel_conn``."""

    def row(job_id: int) -> dict[str, Any]:
        found: dict[str, Any] = poel_conn.execute(
            "SELECT * FROM poel.jobs WHERE id = %s", [job_id]
        ).fetchone()
        return found

    return row


# Processes serve starts (children, the helpers they start) ----------------------------


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


@pytest.fixture
def alive() -> Callable[[int], bool]:
    """``alive(pid)``: whether ``pid`` is a live process (not a zombie)."""
    return process_alive


@pytest.fixture
def gone_within() -> Callable[..., bool]:
    """``gone_within(*pids, seconds=5)``: wait until none of ``pids`` is alive; False if
    one still is after ``seconds``."""

    def gone(*pids: int, seconds: float = 5.0) -> bool:
        deadline = time.monotonic() + seconds
        while any(process_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    return gone


# Cutting the test database off (outages) ---------------------------------------------


@pytest.fixture
def database_name(poel_dsn: str) -> Iterator[str]:
    """The test database's name; it is opened to connections again at teardown."""
    name = urlsplit(poel_dsn).path.lstrip("/")
    yield name
    set_connections(name, allowed=True)


def terminate_backends(database: str, *, keep: Iterable[int] = ()) -> int:
    """End every connection to ``database`` (and only that database) but our own and the
    backends in ``keep``; return how many were ended."""
    with connection(server_dsn()) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> ALL(%s)",
            [database, list(keep)],
        ).fetchall()
    return sum(1 for r in rows if r["ended"])


def set_connections(database: str, *, allowed: bool) -> None:
    """Open or close ``database`` to new connections; closing also ends the current ones."""
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.SQL("true" if allowed else "false")
            )
        )
    if not allowed:
        terminate_backends(database)


@pytest.fixture
def cut() -> Callable[..., Any]:
    """``cut.terminate(db)`` ends the database's connections; ``cut.allow(db, bool)``
    opens or closes it to new ones."""

    class Cut:
        terminate = staticmethod(terminate_backends)
        allow = staticmethod(lambda database, allowed: set_connections(database, allowed=allowed))

    return Cut()


# The dashboard ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    text: str
    url: str
    headers: Any = None


class _Stay(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 303 itself is the answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """urllib with a cookie jar, against one dashboard. ``follow=False`` answers a
    redirect itself instead of following it."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        cookies = urllib.request.HTTPCookieProcessor(self.jar)
        self.opener = urllib.request.build_opener(cookies)
        self.staying = urllib.request.build_opener(cookies, _Stay)

    def get(self, path: str, headers: dict[str, str] | None = None, follow: bool = True):
        return self._open(urllib.request.Request(self.base + path, headers=headers or {}), follow)

    def post(
        self,
        path: str,
        form: dict[str, str],
        headers: dict[str, str] | None = None,
        follow: bool = True,
    ) -> Answer:
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        return self._open(request, follow)

    def cookie(self, name: str = "poel_dashboard") -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def _open(self, request: urllib.request.Request, follow: bool = True) -> Answer:
        opener = self.opener if follow else self.staying
        try:
            with opener.open(request, timeout=10) as response:
                text = response.read().decode()
                return Answer(response.status, text, response.url, response.headers)
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read().decode(), request.full_url, exc.headers)


@pytest.fixture
def dashboard(poel_dsn, tmp_path_factory):
    started = []

    def start(**env) -> Browser:
        handle = spawn_host(
            ["dashboard", "--port", "0"],
            clean_env(DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="poel-testjobs", **env),
            tmp_path_factory.mktemp("dashboard"),
        )
        started.append(handle)
        listening = handle.wait_log("dashboard listening", timeout=START_TIMEOUT_S)
        return Browser(int(listening["port"]))

    yield start
    for handle in started:
        assert handle.stop() == 0, handle.output()


# A stand-in for Supabase's HTTP API ---------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    started: float  # time.monotonic() of this process
    finished: float = 0.0


class FakeSupabase:
    """Answers like Supabase's endpoints and records what they would receive.

    ``/rest/v1/<table>``: GET answers ``rows`` (a list of objects); POST and PATCH answer
    the body sent, as a one-row list (``Prefer: return=representation``). ``/storage/v1/
    object/<bucket>/<path>``: GET answers ``files[(bucket, path)]`` (404 without it).
    Every answer waits ``delay`` seconds first; with ``fail_status`` set, every request
    gets that status and an error body like PostgREST's. ``max_in_flight`` is the most
    requests it was answering at once.

    Its handlers are threads, which the patched test process makes greenlets: it answers
    while the test waits (any sleep of the test yields to it).
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.rows: list[dict[str, Any]] = [{"id": 1, "title": "take 1"}]
        self.files: dict[tuple[str, str], bytes] = {}
        self.delay = 0.0
        self.fail_status: int | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Supabase's edge

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._answer(self)

            do_POST = do_PATCH = do_DELETE = do_HEAD = do_GET

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 1024  # a hundred clients connect at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        length = int(handler.headers.get("Content-Length") or 0)
        request = RecordedRequest(
            handler.command,
            urllib.parse.unquote(path),
            query,
            {name.lower(): value for name, value in handler.headers.items()},
            handler.rfile.read(length) if length else b"",
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            status, content_type, body = self._response(request)
        finally:
            with self._lock:
                self.in_flight -= 1
        request.finished = time.monotonic()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _response(self, request: RecordedRequest) -> tuple[int, str, bytes]:
        def answer(status: int, value: Any) -> tuple[int, str, bytes]:
            return status, "application/json", json.dumps(value).encode()

        if self.fail_status is not None:
            return answer(
                self.fail_status,
                {"code": "XX000", "message": "internal error", "details": None, "hint": None},
            )
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["rest", "v1"] and len(parts) == 3:
            if request.method in ("POST", "PATCH"):
                return answer(201 if request.method == "POST" else 200, [json.loads(request.body)])
            return answer(200, self.rows)
        if parts[:3] == ["storage", "v1", "object"] and len(parts) >= 5:
            content = self.files.get((parts[3], "/".join(parts[4:])))
            if content is not None and request.method == "GET":
                return 200, "application/octet-stream", content
            return answer(
                400, {"statusCode": "404", "error": "not_found", "message": "Object not found"}
            )
        return answer(404, {"message": f"no route {request.path}"})


@pytest.fixture
def fake_supabase() -> Iterator[FakeSupabase]:
    """A :class:`FakeSupabase` on a free loopback port, closed after the test."""
    fake = FakeSupabase()
    yield fake
    fake.close()
