"""``ctx.supabase``: one supabase-py client per process, made on first use, green under gevent.

Why a module of its own: a handler's work is mostly in Supabase (rows through the REST
API, uploaded files in Storage), and building that client by hand in every plugin, in
every process, without knowing whether it cooperates with gevent or may be shared with
thread jobs, is what the host should do once, right:

- **Lazy.** This module (and httpx) is imported when a handler first reads
  ``ctx.supabase``, and ``supabase`` (a third of a second to import) when the first client
  is made: never by ``import poel_host`` nor in a worker whose handlers do not use it.
- **One per process.** ``serve`` has one, shared by its greenlet and thread jobs; each
  child process of the process executor makes its own (children are fresh interpreters).
  Clients are kept per ``(SUPABASE_URL, key)``, so the test kit can point each test at
  its own server.
- **Green.** supabase-py talks HTTP through httpx's synchronous client, whose sockets are
  gevent's once the standard library is patched: a greenlet waiting for Supabase lets the
  others run. A gevent socket belongs to the hub of the thread that made it, though, so a
  pooled connection must never pass from the event loop to a thread job or back: the
  client's transport keeps one connection pool per native thread (the event loop's
  greenlets share theirs).
- **Safe to make from anywhere.** The first uses may come at once from greenlets and from
  native threads: creation is guarded by a native lock, which greenlets wait for
  cooperatively (:func:`_acquire`), so a greenlet never blocks the event loop on it.
- **The key stays inside.** It goes into the client's headers (``apikey`` and
  ``Authorization: Bearer``) and nowhere else: errors name the variables, never their
  values, and neither the context's nor the client's ``repr`` holds it.
"""

from __future__ import annotations

import _thread
import hashlib
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx

from poel_host.errors import PoelError

if TYPE_CHECKING:
    from supabase import Client

    from poel_host.settings import Settings

# supabase-py's own defaults, which it applies only to clients it makes itself: PostgREST
# answers within two minutes, redirects (Storage's signed URLs) are followed.
TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
MIN_CONNECTIONS = 100  # per native thread: at least httpx's default


class SupabaseNotConfigured(PoelError):
    """``ctx.supabase`` was used without ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``."""


def _native(name: str) -> Any:
    """``_thread``'s own ``name`` (``allocate_lock``, ``_local``), even once gevent patched it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", name)
    return getattr(_thread, name)


_clients: dict[tuple[str, str], Client] = {}
_lock = _native("allocate_lock")()  # guards making a client (see _acquire)


def _acquire(lock: Any) -> None:
    """Take a native lock without ever blocking an event loop.

    A native thread could block on it, but a greenlet must not: were the holder another
    greenlet of the same thread (switched out in the middle of making the client), it
    would wait for a loop it stops. So everyone polls, sleeping in between: under gevent
    ``time.sleep`` is cooperative in a greenlet and sleeps on its own hub in a thread, and
    without gevent (a child process) it is the plain sleep. It happens once per process.
    """
    pause = 0.001
    while not lock.acquire(False):
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def warm_up(log: Any) -> None:
    """Import supabase-py at start (serve's, a child's; called when the settings are
    there), so the first job to read ``ctx.supabase`` does not pay for it on its time (a
    second on a busy machine, with the event loop blocked). A broken install is said
    here, and again by the first job that uses the client."""
    try:
        import supabase  # noqa: F401
    except ImportError as exc:
        log.warning("supabase client cannot be imported", error=str(exc))


def missing_settings(settings: Settings | None) -> list[str]:
    """The variables ``ctx.supabase`` needs that ``settings`` lacks."""
    if settings is None:
        return ["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"]
    missing = []
    if not settings.supabase_url:
        missing.append("SUPABASE_URL")
    key = settings.supabase_service_role_key
    if key is None or not key.get_secret_value():
        missing.append("SUPABASE_SERVICE_ROLE_KEY")
    return missing


def client_for(settings: Settings | None) -> Client:
    """This process's supabase client for ``settings``' URL and key, made on first use.

    :raises SupabaseNotConfigured: naming the variables to set.
    """
    missing = missing_settings(settings)
    if missing:
        raise SupabaseNotConfigured(
            "ctx.supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (the project's "
            "API URL and its service_role key); not set: " + ", ".join(missing) + ". Set "
            "them in the environment or the .env file of poel-host serve."
        )
    assert settings is not None and settings.supabase_url is not None
    assert settings.supabase_service_role_key is not None
    url = settings.supabase_url
    key = settings.supabase_service_role_key.get_secret_value()
    ident = (url, hashlib.sha256(key.encode()).hexdigest())  # no copy of the key kept
    client = _clients.get(ident)
    if client is not None:
        return client
    _acquire(_lock)
    try:
        client = _clients.get(ident)
        if client is None:
            client = _clients[ident] = _create(url, key, settings)
    finally:
        _lock.release()
    return client


def _create(url: str, key: str, settings: Settings) -> Client:
    from supabase import ClientOptions, create_client

    connections = max(MIN_CONNECTIONS, settings.worker_concurrency)
    # One TLS context for every thread's pool: loading the CA bundle takes a CPU-second on
    # a busy machine, which each pool would otherwise spend again, on its thread's loop.
    tls = httpx.create_ssl_context()
    http = httpx.Client(
        transport=PerThreadTransport(
            lambda: httpx.HTTPTransport(
                verify=tls,
                http2=True,
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
            )
        ),
        timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=True,
    )
    options = ClientOptions(
        httpx_client=http,
        # A worker acts as the service role: no user session to keep or refresh.
        auto_refresh_token=False,
        persist_session=False,
    )
    return create_client(url, key, options=options)


class PerThreadTransport(httpx.BaseTransport):
    """An httpx transport that keeps one connection pool per native thread.

    Greenlets of one thread share its pool (their sockets share that thread's hub); each
    thread job's thread gets its own, since a gevent socket cannot be used from a thread
    other than the one whose hub made it. Without gevent this only costs a pool per thread.
    """

    def __init__(self, make: Any) -> None:
        self._make = make
        self._local = _native("_local")()
        self._pools: list[httpx.BaseTransport] = []
        self._pools_lock = _native("allocate_lock")()  # held for a list append only

    def _pool(self) -> httpx.BaseTransport:
        pool: httpx.BaseTransport | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = self._make()
            with self._pools_lock:
                self._pools.append(pool)
        return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pool().handle_request(request)

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()

    def __repr__(self) -> str:
        return f"<PerThreadTransport pools={len(self._pools)}>"
