"""Making the process cooperative under gevent, and checking that it is.

``patch()`` must run before psycopg, psycopg_pool or any plugin is imported: the console
script calls it first thing. Importing ``poel_host`` never patches (a web application that
only enqueues must not be monkey-patched by an import).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from poel_host.errors import GreenError


def patch() -> None:
    """Monkey-patch the standard library for gevent, and psycopg2 if a plugin uses it."""
    import gevent
    from gevent import monkey

    # gevent records every greenlet's spawning stack by default (for debugging output);
    # with a greenlet per job (as before runners.py, and still in plugins that spawn their
    # own) py-spy put it at a quarter of the worker's CPU time.
    gevent.config.track_greenlet_tree = False
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    native_write_locks()
    try:
        import psycogreen.gevent
    except ImportError:  # pragma: no cover - psycogreen is a dependency
        return
    if "psycopg2" in sys.modules or _importable("psycopg2"):
        psycogreen.gevent.patch_psycopg()


def native_write_locks() -> None:
    """Make structlog's per-file write locks native locks.

    structlog's ``PrintLogger`` writes each line under a lock per file, made with
    ``threading.Lock()`` when the first logger is built: after the patch that is gevent's
    lock, owned by the event loop. A thread job logging (``ctx.log``) while a greenlet
    held it, or the reverse, deadlocked the process. A native lock is held only for the
    write of one line, which never switches greenlets, so the event loop waits at most that
    long for a thread (and a thread for it)."""
    try:
        import structlog._output as output
    except ImportError:  # pragma: no cover - structlog is a dependency
        return
    locks = getattr(output, "WRITE_LOCKS", None)
    if isinstance(locks, weakref.WeakKeyDictionary) and not isinstance(locks, _NativeLocks):
        output.WRITE_LOCKS = _NativeLocks()  # loggers built before the patch keep theirs


class _NativeLocks(weakref.WeakKeyDictionary):  # type: ignore[type-arg]
    """structlog's table of write locks (file -> lock), making native locks (structlog
    asks ``.get(file)`` and makes a lock itself only when it gets None)."""

    def get(self, file: Any, default: Any = None) -> Any:
        lock = super().get(file)
        if lock is None:
            from gevent import monkey

            lock = self[file] = monkey.get_original("_thread", "allocate_lock")()
        return lock


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def check_green() -> None:
    """Refuse to run if psycopg 3 would block the hub.

    psycopg >= 3.1.14 picks a select-based wait function when it sees gevent's patched
    ``select`` at import time; if it was imported before the patch it keeps the C wait
    function, which blocks every greenlet while a query runs.
    """
    from gevent import monkey

    if not monkey.is_module_patched("select"):
        raise GreenError(
            "gevent has not patched the standard library: start Poel with the `poel-host` "
            "command, or call poel_host.green.patch() before anything imports psycopg"
        )
    from psycopg import waiting

    if waiting.wait is getattr(waiting, "wait_c", None):
        raise GreenError(
            "psycopg was imported before gevent patched the standard library, so its queries "
            "would block every job; make sure nothing imports psycopg (or a plugin that does) "
            "before poel_host.green.patch() runs"
        )


class NativeEvent:
    """A flag a native thread can wait on: gevent's events (and the patched ``threading``
    module's) belong to the event loop's thread."""

    def __init__(self) -> None:
        self._flag = False
        from gevent import monkey

        self._lock = monkey.get_original("_thread", "allocate_lock")()
        self._lock.acquire()  # held until set()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._flag and self._lock.acquire(timeout=-1 if timeout is None else timeout):
            self._lock.release()
        return self._flag
