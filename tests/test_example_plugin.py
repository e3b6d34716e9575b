"""Third-party plugins, written only from docs/plugin-authors.md, as real distributions.

``tests/example-plugin/poel-example-thumbnails`` (the guide's walk-through) and
``tests/example-plugin/poel-example-tones`` (its section on executors: a CPU-heavy job in a
child process) are built and installed with pip (into a directory of their own, put on
``PYTHONPATH``, so the test environment is left as it was); each one's own tests then run
against that installation with the kit poel-host ships, and ``poel-host serve`` discovers
them through their entry points, migrates their tables and runs their jobs. The
``packaging`` tox environment does the same from wheels in a clean virtualenv.

``tests/example-plugin/poel-example-pipeline`` is the README's workflow example, installed
and tested the same way (with poel-records, whose job is its first step, loaded beside it):
an application inserts a record and enqueues its pipeline in one transaction, and serve
fingerprints the record's audio and separates it into bands in two child processes side
by side, then merges both into the record, once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).parent / "example-plugin"
GUIDE = Path(__file__).parents[1] / "docs" / "plugin-authors.md"
README = Path(__file__).parents[1] / "README.md"
THUMBNAILS = "poel-example-thumbnails"
TONES = "poel-example-tones"
PIPELINE = "poel-example-pipeline"
# Each example (a folder of EXAMPLES) and how many tests it has.
EXAMPLE_TESTS = {THUMBNAILS: 6, TONES: 9, PIPELINE: 10}
# The plugins an example's tests load, where not only itself.
LOADED = {PIPELINE: f"poel-records,{PIPELINE}"}  # its first step is poel-records' job
PIP_TIMEOUT_S = 300
PIPELINE_TIMEOUT_S = 120

# The pipeline's application: writes the record's audio (the demo's tones for its id),
# inserts the record and enqueues its pipeline in one transaction, and prints the
# workflow's id and the tones it put in the audio.
APPLICATION = """
import json, sys

import psycopg

from poel_example_pipeline import audio
from poel_example_pipeline.flow import enqueue_pipeline
from poel_host import Queue

dsn, record_id, song = sys.argv[1], int(sys.argv[2]), sys.argv[3]
audio.write_wav(song, audio.demo_audio(seed=record_id))
with Queue(dsn) as queue, psycopg.connect(dsn) as conn:
    conn.execute("INSERT INTO records (id) VALUES (%s)", [record_id])
    workflow_id = enqueue_pipeline(queue, record_id, song, connection=conn)
print(json.dumps({"workflow_id": workflow_id, "tones": audio.demo_tones(record_id)}))
"""


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugins built and installed by pip into a fresh directory (their
    dependencies, poel-host, poel-records and pydantic, are those of the environment
    running the tests)."""
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


@pytest.mark.parametrize(
    ("doc", "example", "at_least"),
    [(GUIDE, TONES, 6), (README, PIPELINE, 2)],
    ids=["guide", "readme"],
)
def test_the_docs_code_of_an_example_is_the_examples_code(
    doc: Path, example: str, at_least: int
) -> None:
    """Each ``python`` block of the doc whose first line names a file of the example
    (``# poel_example_tones/plugin.py``) shows lines of that file, in the file's order, so
    the doc cannot drift from the example that is tested (a block may leave lines out)."""
    blocks = re.findall(
        r"^```python\n# (\S+\.py)\n(.*?)^```$",
        doc.read_text(encoding="utf-8"),
        re.MULTILINE | re.DOTALL,
    )
    assert len(blocks) >= at_least, blocks
    for path, code in blocks:
        source = iter((EXAMPLES / example / path).read_text(encoding="utf-8").splitlines())
        for line in filter(str.strip, code.splitlines()):
            assert any(line == theirs for theirs in source), (
                f"{doc.name}'s block of {path} shows a line that is not in the file, or not"
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
        env=example_env(installed_example, LOADED.get(name, name)),
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


@pytest.mark.process
def test_serve_runs_the_pipeline_for_a_record(
    installed_example: Path,
    serve: Callable[..., Any],
    poel_conn: Any,
    poel_dsn: str,
    poel_queue: Any,
    wait_for: Callable[..., Any],
    tmp_path: Path,
) -> None:
    host = serve(
        POEL_LOAD_PLUGINS=LOADED[PIPELINE], PYTHONPATH=str(installed_example), POEL_PROCESSES=2
    )
    # Both children ready, so that one claim can take both released steps.
    wait_for(
        lambda: re.search(r"^poel_processes_idle 2\b", host.http("/metrics").text, re.MULTILINE),
        timeout=60,
        what="two idle worker processes",
    )
    [plugin] = [p for p in host.http("/plugins").body["plugins"] if p["name"] == PIPELINE]
    assert {job["type"]: job["executor"] for job in plugin["jobs"]} == {
        "pipeline.fingerprint": "process",
        "pipeline.separate_bands": "process",
        "pipeline.merge": "greenlet",
    }

    # The application, with only the installed distributions on its path.
    song = tmp_path / "record-7.wav"
    application = subprocess.run(
        [sys.executable, "-c", APPLICATION, poel_dsn, "7", str(song)],
        cwd=tmp_path,
        env=example_env(installed_example, LOADED[PIPELINE]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert application.returncode == 0, application.stderr
    enqueued = json.loads(application.stdout)

    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while (state := poel_queue.workflow(enqueued["workflow_id"])).finished_at is None:
        assert time.monotonic() < deadline, f"the pipeline did not end in time: {state}"
        time.sleep(0.1)
    assert state.state == "succeeded", state
    record, fingerprint, bands, merge = (
        state.step(name) for name in ("record", "fingerprint", "bands", "merge")
    )

    # fingerprint and bands ran side by side, each in a child process of its own...
    assert min(fingerprint.started_at, bands.started_at) >= record.finished_at
    assert fingerprint.started_at < bands.finished_at
    assert bands.started_at < fingerprint.finished_at
    printed = host.wait_log("audio fingerprinted", record_id=7, jobId=fingerprint.job_id)
    separated = host.wait_log("audio separated", record_id=7, jobId=bands.job_id)
    assert len({printed["child_pid"], separated["child_pid"], host.pid}) == 3
    # ...and the merge ran once, after both.
    assert merge.started_at >= max(fingerprint.finished_at, bands.finished_at)
    assert [s.attempts for s in state.steps] == [1, 1, 1, 1]
    host.wait_log("record merged", jobId=merge.job_id)
    merged = [e for e in host.logs if e.get("msg") == "record merged"]
    assert [e["jobId"] for e in merged] == [merge.job_id]

    # The record got its audio (its own step), the fingerprint and the bands' files.
    row = poel_conn.execute("SELECT * FROM records WHERE id = 7").fetchone()
    assert row["record_type"] == "audio" and row["processed_at"] is not None
    assert row["metadata"]["audio"] == str(song)
    assert row["metadata"]["fingerprint"] == poel_queue.get(fingerprint.job_id)["result"]
    assert len(row["metadata"]["fingerprint"]["digest"]) == 32
    stored_bands = row["metadata"]["bands"]
    assert [(b["low_hz"], b["high_hz"]) for b in stored_bands] == [
        (0, 250),
        (250, 500),
        (500, 1000),
        (1000, 2000),
        (2000, 4000),
    ]
    for band, tone in zip(stored_bands, enqueued["tones"], strict=True):
        assert Path(band["path"]).parent == song.with_suffix(".bands")
        assert Path(band["path"]).stat().st_size > 44  # a WAV header and samples
        assert abs(band["peak_hz"] - tone) < 1

    assert host.stop() == 0
