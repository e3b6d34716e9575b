"""A third-party plugin, written only from docs/plugin-authors.md, as a real distribution.

``tests/example-plugin/poel-example-thumbnails`` is built and installed with pip (into a
directory of its own, put on ``PYTHONPATH``, so the test environment is left as it was);
its own tests then run against that installation with the kit poel-host ships, and
``poel-host serve`` discovers it through its entry point, migrates its table and runs its
jobs. The ``packaging`` tox environment does the same from wheels in a clean virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).parent / "example-plugin" / "poel-example-thumbnails"
DISTRIBUTION = "poel-example-thumbnails"
PIP_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built and installed by pip into a fresh directory (its
    dependencies, poel-host and pydantic, are those of the environment running the tests)."""
    target = tmp_path_factory.mktemp("example-site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--disable-pip-version-check", "--target", str(target), str(EXAMPLE)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("poel_example_thumbnails-0.1.0.dist-info/entry_points.txt"))
    return target


def example_env(site: Path, **extra: str) -> dict[str, str]:
    """The test environment with the example's install directory on the path, nothing
    Poel reads inherited, and only the example plugin loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POEL_")}
    if "POEL_TEST_DATABASE_URL" in os.environ:
        env["POEL_TEST_DATABASE_URL"] = os.environ["POEL_TEST_DATABASE_URL"]
    env.pop("DATABASE_URL", None)
    env.update(PYTHONPATH=str(site), POEL_LOAD_PLUGINS=DISTRIBUTION, **extra)
    return env


@pytest.mark.process
def test_the_example_plugins_own_tests_pass_against_the_installed_plugin(
    installed_example: Path, tmp_path: Path
) -> None:
    # Run from an empty folder, so the package is imported from the installation, not
    # from the source tree next to its tests.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-c", str(EXAMPLE / "pyproject.toml"), "--rootdir", str(EXAMPLE)]
    done = subprocess.run(
        [*command, str(EXAMPLE / "tests")],
        cwd=tmp_path,
        env=example_env(installed_example),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


@pytest.mark.process
def test_serve_discovers_migrates_and_runs_the_example_plugin(
    installed_example: Path,
    serve: Callable[..., Any],
    poel_conn: Any,
    wait_sql: Callable[..., Any],
) -> None:
    host = serve(POEL_LOAD_PLUGINS=DISTRIBUTION, PYTHONPATH=str(installed_example))

    listing = host.http("/plugins").body
    [plugin] = listing["plugins"]
    assert (plugin["name"], plugin["distribution"], plugin["version"]) == (
        DISTRIBUTION,
        DISTRIBUTION,
        "0.1.0",
    )
    assert sorted(job["type"] for job in plugin["jobs"]) == ["thumbnails.make", "thumbnails.notify"]
    applied = poel_conn.execute(
        "SELECT version, name FROM poel.migrations WHERE plugin = %s", [DISTRIBUTION]
    ).fetchall()
    assert applied == [{"version": 1, "name": "thumbnails"}]

    # An application enqueues from SQL, in its own transaction.
    poel_conn.execute("""SELECT poel.enqueue('thumbnails.make', '{"image_id": 3, "width": 64}')""")

    wait_sql(
        "SELECT count(*) = 2 FROM poel.jobs WHERE state = 'succeeded'"
        " AND job_type IN ('thumbnails.make', 'thumbnails.notify')",
        timeout=20,
    )
    made = poel_conn.execute("SELECT image_id, width FROM example_thumbnails").fetchall()
    assert made == [{"image_id": 3, "width": 64}]
    assert host.find_log("thumbnail ready", image_id=3) is not None

    assert host.stop() == 0
