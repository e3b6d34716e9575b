"""``poel-host steer``, ``unsteer`` and ``steering``: messages, the table and exit codes a
script can rely on."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.process


def test_steer_unsteer_and_list_from_the_command_line(poel_cli: Any, poel_dsn: str, poel_conn):
    def run(*args: str) -> Any:
        return poel_cli(*args, DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="")

    assert run("steering").stdout == "nothing is steered\n"
    done = run("steer", "type", "test.noop", "--concurrency", "4", "--weight", "2")
    assert (done.returncode, done.stdout) == (
        0,
        "steered job type 'test.noop': at most 4 slots (2 a job) (an operator's limit: no "
        "serve overwrites it until poel-host unsteer)\n",
    )
    keyed = run(
        "steer",
        "type",
        "test.keyed",
        "--rate",
        "5",
        "--per",
        "60",
        "--per-key",
        "--fair",
        "--key-weight",
        "big=3",
        "--key-weight",
        "a=b=2",
        "--key-field",
        "tenant",
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "5 starts per 60s, for each key, fair shares between keys" in keyed.stdout
    assert run("steer", "queue", "bulk", "--concurrency", "10").returncode == 0
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, state, slots, ready)"
        " VALUES ('test.noop', 'bulk', 'running', 2, false)"
    )
    poel_conn.execute("INSERT INTO poel.steering_starts VALUES ('key:test.keyed:x', now())")

    lines = run("steering").stdout.splitlines()
    assert lines[0].split() == [
        "KIND",
        "NAME",
        "CONCURRENCY",
        "IN",
        "USE",
        "RATE/WINDOW",
        "PER_KEY",
        "FAIR",
        "SOURCE",
    ]
    assert lines[1].split() == ["queue", "bulk", "10", "2/10", "-", "-", "-", "operator"]
    assert lines[2].split() == [
        *["type", "test.keyed", "-", "0", "keys,", "busiest", "0", "1/5", "per", "60s"],
        *["yes", "yes", "(a=b=2,big=3)", "operator"],
    ]
    assert lines[3].split() == [
        *["type", "test.noop", "4", "(weight", "2)", "2/4", "-", "-", "-", "operator"]
    ]
    listed = json.loads(run("steering", "--json").stdout)
    assert [(r["kind"], r["name"], r["running"]) for r in listed] == [
        ("queue", "bulk", 2),
        ("type", "test.keyed", 0),
        ("type", "test.noop", 2),
    ]
    assert listed[1]["key_weights"] == {"big": 3, "a=b": 2} and listed[1]["per"] == 60

    gone = run("unsteer", "queue", "bulk")
    assert (gone.returncode, gone.stdout) == (
        0,
        "unsteered queue 'bulk': its jobs are claimed without limits\n",
    )
    again = run("unsteer", "queue", "bulk")
    assert again.returncode == 1 and "queue 'bulk' was not steered" in again.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["type", "test.noop", "--concurrency", "2", "--weight", "3"], "weight 3 is more than"),
        (["queue", "bulk", "--concurrency", "2", "--per-key"], "steer the job type"),
        (["type", "test.noop"], "nothing to steer"),
        (["type", "test.noop", "--fair", "--key-weight", "big"], "a key weight is KEY=N"),
        (["type", "test.noop", "--fair", "--key-weight", "big=-1"], "a key weight is KEY=N"),
        (["type", "test.noop", "--concurrency", "2", "--per", "5"], "give rate= too"),
        (["type", "x'; DROP TABLE poel.jobs; --", "--concurrency", "1"], "is not a valid name"),
        (["jobs", "x", "--concurrency", "1"], "invalid choice"),
    ],
)
def test_values_that_cannot_be_set_exit_2(poel_cli: Any, poel_dsn: str, args: list[str], says):
    bad = poel_cli("steer", *args, DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="")
    assert bad.returncode == 2 and says in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
