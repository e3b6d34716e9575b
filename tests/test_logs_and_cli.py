"""Logging (one JSON object a line) and the command line (help, version, one-line errors).

Both configure or run a whole process, so they run in a fresh interpreter.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from poel_host import __version__
from poel_host.cli import build_parser

BASE_KEYS = {"level", "ts", "msg", "service", "environment"}

LOG_SCRIPT = """
import logging, sys
from poel_host.logs import configure_logging, get_logger

def write_lines():
    get_logger().info("worker started", concurrency=4)
    get_logger().debug("debug detail")
    job = get_logger(jobId=42, jobType="process_new_record", attempt=2)
    job.warning("job retry scheduled", error="boom")
    logging.getLogger("some.library").warning("library says %s", "hi")
    try:
        raise ValueError("bad thing")
    except ValueError:
        job.exception("job failed")

for environment, log_format, level in (
    ("production", "json", "info"),
    ("development", "json", "debug"),
    ("development", "console", "info"),
):
    print("--", file=sys.stderr, flush=True)
    configure_logging(environment=environment, log_format=log_format, level=level)
    write_lines()
"""


@pytest.fixture(scope="module")
def log_runs() -> list[list[str]]:
    """The stderr lines of the script, one list per configuration (one interpreter)."""
    done = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    runs = done.stderr.split("--\n")
    assert runs[0] == ""
    return [run.splitlines() for run in runs[1:]]


def test_json_logs(log_runs):
    records = [json.loads(line) for line in log_runs[0]]  # every line is one JSON object
    for record in records:
        assert set(record) >= BASE_KEYS, record
        assert record["service"] == "poel-worker"
        assert record["environment"] == "production"
        ts = dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert ts.utcoffset() == dt.timedelta(0)
        assert "event" not in record  # renamed to msg
    messages = [r["msg"] for r in records]
    assert "debug detail" not in messages  # below the level
    started, retry, library, failed = records
    assert (started["msg"], started["level"], started["concurrency"]) == (
        "worker started",
        "info",
        4,
    )
    assert (retry["jobId"], retry["jobType"], retry["attempt"]) == (42, "process_new_record", 2)
    assert (retry["level"], retry["error"]) == ("warning", "boom")
    assert library["msg"] == "library says hi"
    assert library["level"] == "warning"
    assert failed["level"] == "error" and failed["jobId"] == 42
    assert "ValueError: bad thing" in failed["exception"]


def test_debug_level(log_runs):
    records = [json.loads(line) for line in log_runs[1]]
    assert "debug detail" in [r["msg"] for r in records]
    assert {r["environment"] for r in records} == {"development"}


def test_console_format_only_when_asked(log_runs):
    console = log_runs[2]
    assert any("worker started" in line for line in console)
    with pytest.raises(json.JSONDecodeError):
        json.loads(console[0])


# CLI --------------------------------------------------------------------------------------

SUBCOMMANDS = [
    ["serve"],
    ["migrate"],
    ["enqueue"],
    ["plugins"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "stats"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: poel-host {' '.join(command)}")
    assert len(out.splitlines()) > 3


def test_enqueue_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["enqueue", "--help"])
    out = capsys.readouterr().out
    for option in ("--run-at", "--delay", "--priority", "--queue", "--max-attempts"):
        assert option in out
    assert "--unique-key" in out


def run_cli(*args: str, cwd, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("POEL_")}
    environment.pop("DATABASE_URL", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "poel_host", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_help_of_the_real_command(tmp_path):
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: poel-host")
    for command in ("serve", "migrate", "enqueue", "plugins", "jobs"):
        assert command in done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"poel-host {__version__}"


def test_enqueue_invalid_json_is_one_line_without_traceback(tmp_path):
    # refused before the database is reached: its server does not even exist
    done = run_cli(
        "enqueue",
        "test.noop",
        "{not json",
        cwd=tmp_path,
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        POEL_LOAD_PLUGINS="poel-testjobs",
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("poel-host: error: payload for 'test.noop' is not valid JSON"), line


@pytest.fixture
def cli_main(monkeypatch, tmp_path, capsys):
    """``cli_main(*args)``: poel_host.cli.main in this process (logging left as it is),
    returning (exit code, stdout, stderr). DATABASE_URL names a server that does not exist
    unless the test sets it."""
    from poel_host import cli

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("POEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("POEL_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("POEL_LOAD_PLUGINS", "poel-testjobs")
    monkeypatch.setattr(cli, "configure_logging", lambda **kwargs: None)

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["test.noop", "[1, 2]"], "must be a JSON object, got list"),
        (["test.flaky", '{"fail_times": -1}'], "fail_times: Input should be greater than or"),
        (["no.such.type", "{}"], "no installed plugin handles job type 'no.such.type'"),
        (["test.noop", "{}", "--delay", "-5"], "delay must not be negative"),
        (["test.noop", "{}", "--max-attempts", "0"], "max_attempts must be at least 1"),
    ],
)
def test_enqueue_errors_are_one_line(cli_main, args, expected):
    # refused before the database is reached (that would be exit 4, "cannot connect")
    code, out, err = cli_main("enqueue", *args)
    assert code == 1
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("poel-host: error: ")
    assert expected in line


def test_unreachable_database_is_exit_4(cli_main):
    code, _, err = cli_main("enqueue", "test.noop", "{}")
    assert code == 4
    [line] = err.splitlines()
    assert line.startswith("poel-host: error: cannot connect to PostgreSQL at ")


def test_enqueue_prints_the_id_and_honours_options(cli_main, poel_dsn, poel_conn, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", poel_dsn)
    code, out, err = cli_main(
        "enqueue",
        "test.noop",
        '{"key": "cli"}',
        "--delay",
        "60",
        "--priority",
        "3",
        "--queue",
        "cli",
        "--max-attempts",
        "2",
        "--unique-key",
        "once",
    )
    assert (code, err) == (0, "")
    job_id = int(out.strip())
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()
    assert row["payload"] == {"key": "cli"}
    assert (row["priority"], row["queue"], row["max_attempts"], row["unique_key"]) == (
        3,
        "cli",
        2,
        "once",
    )
    assert row["run_at"] - row["created_at"] == dt.timedelta(seconds=60)

    code, out, err = cli_main("enqueue", "test.noop", "{}", "--unique-key", "once")
    assert code == 1
    assert err.startswith("poel-host: error: ")
    assert f"(job {job_id})" in err

    run_at = "2031-05-06T07:08:09+00:00"
    code, out, _ = cli_main("enqueue", "test.noop", "--run-at", run_at)
    assert code == 0
    row = poel_conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [int(out)]).fetchone()
    assert row["run_at"] == dt.datetime.fromisoformat(run_at)
    assert row["payload"] == {}


def test_plugins_json_is_the_description(cli_main):
    code, out, _ = cli_main("plugins", "--json")
    assert code == 0
    description = json.loads(out)
    [plugin] = description["plugins"]
    assert plugin["name"] == "poel-testjobs"
    assert plugin["version"]
    assert "test.noop" in {job["type"] for job in plugin["jobs"]}
    assert description["failed"] == []


def test_plugins_table(cli_main):
    code, out, _ = cli_main("plugins")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["PLUGIN", "VERSION", "JOB"]
    assert any(row.split()[:1] == ["poel-testjobs"] and "test.noop" in row for row in rows)


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["enqueue", "test.noop", "--run-at", "2030-01-01T00:00:00"])
    assert info.value.code == 2
    assert "give a time zone" in capsys.readouterr().err


def test_psql_keeps_the_password_off_every_command_line(tmp_path, poel_dsn):
    """`poel-host psql` while every process's argv is read: the password is in none of
    them; psql gets it from a passfile only this user reads, gone when psql ends."""
    secret = "s3cret:pass\\word"
    dsn = poel_dsn.replace("postgres@", f"postgres:{urllib.parse.quote(secret, safe='')}@", 1)
    assert secret not in dsn and "s3cret" in dsn
    # psql shows its passfile (a shell command, `\\!`), then waits, so that `ps` can look.
    script = tmp_path / "script.sql"
    script.write_text('\\! echo "$PGPASSFILE"; cat "$PGPASSFILE"\nSELECT pg_sleep(1.5);\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "poel_host", "psql", "-At", "-f", str(script)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("POEL_", "PG"))},
            "DATABASE_URL": dsn,
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen_psql = False
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            assert b"s3cret" not in argv, argv
            seen_psql = seen_psql or (b"psql" in argv and b"dbname=poel_t_" in argv)
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen_psql, "psql was never seen running"
    passfile, line = out.decode().splitlines()[:2]
    assert "poel-pgpass-" in passfile
    assert line == "*:*:*:*:s3cret\\:pass\\\\word"  # the passfile format's escapes
    assert not Path(passfile).exists(), "the passfile outlived psql"
