"""Making the process cooperative under gevent, and checking that it is.

``patch()`` must run before psycopg, psycopg_pool or any plugin is imported: the console
script calls it first thing. Importing ``poel_host`` never patches (a web application that
only enqueues must not be monkey-patched by an import).
"""

from __future__ import annotations

import sys

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
    try:
        import psycogreen.gevent
    except ImportError:  # pragma: no cover - psycogreen is a dependency
        return
    if "psycopg2" in sys.modules or _importable("psycopg2"):
        psycogreen.gevent.patch_psycopg()


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
