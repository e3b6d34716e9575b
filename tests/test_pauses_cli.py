"""``poel-host pause``, ``resume`` and ``pauses``: messages and exit codes a script can
rely on."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.process


def test_pause_resume_and_list_from_the_command_line(poel_cli: Any, poel_dsn: str):
    def run(*args: str) -> Any:
        return poel_cli(*args, DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="")

    assert "nothing is paused" in run("pauses").stdout
    done = run("pause", "--type", "test.noop", "--reason", "deploying v2", "--by", "ana")
    assert (done.returncode, done.stdout) == (
        0,
        "paused job type 'test.noop': its queued jobs wait until poel-host resume\n",
    )
    again = run("pause", "--type", "test.noop")
    assert again.returncode == 0 and "was paused already since" in again.stdout
    assert "by ana: nothing changed" in again.stdout
    assert run("pause", "--queue", "bulk").returncode == 0
    table = run("pauses").stdout
    assert "deploying v2" in table and "bulk" in table
    listed = json.loads(run("pauses", "--json").stdout)
    assert [(p["kind"], p["name"], p["paused_by"]) for p in listed] == [
        ("type", "test.noop", "ana"),
        ("queue", "bulk", "postgres"),
    ]
    resumed = run("resume", "--type", "test.noop")
    assert (resumed.returncode, resumed.stdout) == (0, "resumed job type 'test.noop'\n")
    not_paused = run("resume", "--type", "test.noop")
    assert not_paused.returncode == 1
    assert "job type 'test.noop' was not paused: nothing to resume" in not_paused.stderr
    bad = run("pause", "--type", "x'; DROP TABLE poel.jobs; --")
    assert bad.returncode == 2 and "is not a valid name" in bad.stderr
    assert "Traceback" not in bad.stderr
    huge = run("pause", "--queue", "q" * 10_000)
    assert huge.returncode == 2 and "over the limit of 200" in huge.stderr
    assert len(huge.stderr) < 300
    neither = run("pause")
    assert neither.returncode == 2 and "--queue --type is required" in neither.stderr
