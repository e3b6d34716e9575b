"""The user the embedded PostgreSQL runs as, and running its programs as that user.

PostgreSQL refuses to run as root, so as root the server and its programs (``initdb``,
``pg_ctl``) run as the unprivileged user ``pgserver``; otherwise as this process's own
user. What that user owns (the data directory, its settings, the socket's folder) is
handed to it here, and nothing above the data directory is opened up: a folder the user
cannot reach is refused with what to do. Kept apart from :mod:`poel_host.embedded_cluster`
(what is done to a data directory) because it is the part that touches other users.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from poel_host.embedded_build import EmbeddedError, clean_environment, reachable_binaries

RUN_TIMEOUT_S = 90  # a program's longest run: pg_ctl's own start timeout, and some


class ServerUser:
    """``name``: the user the server runs as, or None for this process's own user."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.bin: Path | None = None  # where its programs are, once known

    def uid(self) -> int:
        if self.name is None:
            return os.getuid()
        import pwd

        return pwd.getpwnam(self.name).pw_uid

    def give(self, path: Path) -> None:
        """Hand ``path`` to the server's user (only when running as root)."""
        if self.name is not None:
            import pwd

            entry = pwd.getpwnam(self.name)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def check_reachable(self, folder: Path) -> None:
        """As root: refuse, rather than open up its parents, a data directory the server's
        unprivileged user cannot reach."""
        if self.name is None:
            return
        done = subprocess.run(
            ["/bin/sh", "-c", 'test -w "$1" && test -x "$1"', "sh", str(folder)],
            user=self.name,
            env=clean_environment(),
            cwd="/",
            check=False,
        )
        if done.returncode != 0:
            raise EmbeddedError(
                f"PostgreSQL cannot run as root, so the embedded server runs as the user "
                f"{self.name!r}, who cannot reach {folder}: choose a POEL_DATA_DIR outside "
                "root's home (the default is under /var/lib/poel), or let others through "
                "every folder above it (chmod o+x); Poel does not open them itself"
            )

    def run(self, program: str, *args: str) -> None:
        """Run one of PostgreSQL's programs as the server's user; its output is the error."""
        path = (self.bin or reachable_binaries(self.name)) / program
        try:
            done = subprocess.run(
                [str(path), *args],
                user=self.name,
                env=clean_environment(),
                cwd="/",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                start_new_session=True,  # the terminal's Ctrl-C is serve's, not the server's
                timeout=RUN_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedError(f"{program} failed: {exc}") from None
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise EmbeddedError(f"{program} failed (exit {done.returncode}): {output}")
