"""Third-party plugins, written only from docs/plugin-authors.md, as real distributions.

``tests/example-plugin/poel-example-thumbnails`` (the guide's walk-through) and
``tests/example-plugin/poel-example-tones`` (its section on executors: a CPU-heavy job in a
child process) are built and installed with pip (into a directory of their own, put on
``PYTHONPATH``, so the test environment is left as it was); each one's own tests then run
against that installation with the kit poel-host ships, and ``poel-host serve`` discovers
them through their entry points, migrates their tables and runs their jobs. The
``packaging`` tox environment does the same from wheels in a clean virtualenv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).parent / "example-plugin"
GUIDE = Path(__file__).parents[1] / "docs" / "plugin-authors.md"
THUMBNAILS = "poel-example-thumbnails"
TONES = "poel-example-tones"
# Each example (a folder of EXAMPLES) and how many tests it has.
EXAMPLE_TESTS = {THUMBNAILS: 6, TONES: 9}
PIP_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugins built and installed by pip into a fresh directory (their
    dependencies, poel-host and pydantic, are those of the environment running the tests)."""
    target = tmp_path_factory.mktemp("example-site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--disable-pip-version-check", "--target", str(target)]
    command += [str(EXAMPLES / name) for name in EXAMPLE_TESTS]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in EXAMPLE_TESTS:
        package = name.replace("-", "_")
        assert list(target.glob(f"{package}-0.1.0.dist-info/entry_points.txt")), name
    return target


def example_env(site: Path, plugins: str, **extra: str) -> dict[str, str]:
    """The test environment with the examples' install directory on the path, nothing
    Poel reads inherited, and only the ``plugins`` (a comma list) loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POEL_")}
    if "POEL_TEST_DATABASE_URL" in os.environ:
        env["POEL_TEST_DATABASE_URL"] = os.environ["POEL_TEST_DATABASE_URL"]
    env.pop("DATABASE_URL", None)
    env.update(PYTHONPATH=str(site), POEL_LOAD_PLUGINS=plugins, **extra)
    return env


def outcome_counts(summary: str) -> dict[str, int]:
    """``{"passed": 7, "xfailed": 1}`` from pytest's last line."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary.splitlines()[-1])}


def test_the_guides_code_of_the_tones_example_is_the_examples_code() -> None:
    """Each ``python`` block of the guide whose first line names a file of the example
    (``# poel_example_tones/plugin.py``) shows lines of that file, in the file's order, so
    the guide cannot drift from the example that is tested (a block may leave lines out)."""
    blocks = re.findall(
        r"^```python\n# (\S+\.py)\n(.*?)^```$",
        GUIDE.read_text(encoding="utf-8"),
        re.MULTILINE | re.DOTALL,
    )
    assert len(blocks) >= 6, blocks
    for path, code in blocks:
        source = iter((EXAMPLES / TONES / path).read_text(encoding="utf-8").splitlines())
        for line in filter(str.strip, code.splitlines()):
            assert any(line == theirs for theirs in source), (
                f"the guide's block of {path} shows a line that is not in the file, or not"
                f" in this order: {line!r}"
            )


@pytest.mark.process
@pytest.mark.parametrize("name", list(EXAMPLE_TESTS))
def test_the_example_plugins_own_tests_pass_against_the_installed_plugin(
    name: str, installed_example: Path, tmp_path: Path
) -> None:
    # Run from an empty folder, so the package is imported from the installation, not
    # from the source tree next to its tests.
    example = EXAMPLES / name
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-c", str(example / "pyproject.toml"), "--rootdir", str(example)]
    done = subprocess.run(
        [*command, str(example / "tests")],
        cwd=tmp_path,
        env=example_env(installed_example, name),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    counts = outcome_counts(done.stdout)
    # test_tones.py marks what waits on the host as expected to fail (a TODO there).
    assert sum(counts.values()) == EXAMPLE_TESTS[name], done.stdout
    assert set(counts) <= {"passed", "xfailed", "xpassed"}, done.stdout


@pytest.mark.process
def test_serve_discovers_migrates_and_runs_the_example_plugins(
    installed_example: Path,
    serve: Callable[..., Any],
    poel_conn: Any,
    wait_sql: Callable[..., Any],
) -> None:
    host = serve(POEL_LOAD_PLUGINS=f"{THUMBNAILS},{TONES}", PYTHONPATH=str(installed_example))

    listing = host.http("/plugins").body
    plugins = {plugin["name"]: plugin for plugin in listing["plugins"]}
    assert sorted(plugins) == [THUMBNAILS, TONES]
    for name, plugin in plugins.items():
        assert (plugin["distribution"], plugin["version"]) == (name, "0.1.0")
    executors = {
        job["type"]: job["executor"] for plugin in plugins.values() for job in plugin["jobs"]
    }
    assert executors == {
        "thumbnails.make": "greenlet",
        "thumbnails.notify": "greenlet",
        "tones.fingerprint": "process",
    }
    applied = poel_conn.execute(
        "SELECT plugin, version, name FROM poel.migrations WHERE plugin = ANY(%s) ORDER BY 1",
        [[THUMBNAILS, TONES]],
    ).fetchall()
    assert applied == [
        {"plugin": THUMBNAILS, "version": 1, "name": "thumbnails"},
        {"plugin": TONES, "version": 1, "name": "tone_fingerprints"},
    ]

    # An application enqueues from SQL, in its own transaction.
    poel_conn.execute("""SELECT poel.enqueue('thumbnails.make', '{"image_id": 3, "width": 64}')""")
    poel_conn.execute(
        """SELECT poel.enqueue('tones.fingerprint', '{"tone_id": 1, "frequency": 440}')"""
    )

    wait_sql(
        "SELECT count(*) = 3 FROM poel.jobs WHERE state = 'succeeded'"
        " AND job_type IN ('thumbnails.make', 'thumbnails.notify', 'tones.fingerprint')",
        timeout=30,
    )
    made = poel_conn.execute("SELECT image_id, width FROM example_thumbnails").fetchall()
    assert made == [{"image_id": 3, "width": 64}]
    assert host.find_log("thumbnail ready", image_id=3) is not None
    [tone] = poel_conn.execute(
        "SELECT tone_id, peak_hz, frames FROM example_tone_fingerprints"
    ).fetchall()
    assert (tone["tone_id"], tone["frames"]) == (1, 61)
    assert abs(tone["peak_hz"] - 440) < 16
    assert host.find_log("tone fingerprinted", tone_id=1) is not None

    assert host.stop() == 0


@pytest.mark.process
def test_serve_fingerprints_in_child_processes_warmed_once_each(
    installed_example: Path,
    serve: Callable[..., Any],
    poel_conn: Any,
    wait_sql: Callable[..., Any],
) -> None:
    # One child at a time, replaced after two jobs: three jobs make two children.
    host = serve(
        POEL_LOAD_PLUGINS=TONES,
        PYTHONPATH=str(installed_example),
        POEL_PROCESSES=1,
        POEL_PROCESS_MAX_JOBS=2,
    )
    for tone_id in (1, 2, 3):
        poel_conn.execute(
            "SELECT poel.enqueue('tones.fingerprint', %s::jsonb)",
            [f'{{"tone_id": {tone_id}, "frequency": 440, "seconds": 0.5}}'],
        )

    wait_sql(
        "SELECT count(*) = 3 FROM poel.jobs WHERE job_type = 'tones.fingerprint'"
        " AND state = 'succeeded'",
        timeout=60,
    )
    rows = poel_conn.execute(
        "SELECT tone_id, pid, tables_build, tables_by, fingerprint"
        " FROM example_tone_fingerprints ORDER BY tone_id"
    ).fetchall()
    children: dict[int, set[str]] = {}
    for row in rows:
        children.setdefault(row["pid"], set()).add(row["tables_build"])
    assert host.pid not in children
    assert sorted(len([r for r in rows if r["pid"] == pid]) for pid in children) == [1, 2]
    assert all(len(builds) == 1 for builds in children.values()), children  # once a child
    assert {row["tables_by"] for row in rows} == {"process_started"}
    assert len({row["fingerprint"] for row in rows}) == 1
    # The child's log lines reach serve's stream, bound to their job.
    [job_id] = [
        row["id"]
        for row in poel_conn.execute(
            "SELECT id FROM poel.jobs WHERE payload->>'tone_id' = '1'"
        ).fetchall()
    ]
    assert host.find_log("tone fingerprinted", tone_id=1, jobId=job_id) is not None

    assert host.stop() == 0
