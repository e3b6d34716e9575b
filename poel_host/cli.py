"""The ``poel-host`` command line: serve, migrate, enqueue, plugins, jobs, workers,
psql, dashboard.

Every error Poel knows about is printed as one line (``poel-host: error: ...``) with the
exit code of its class; settings errors exit 2 and list every bad variable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from poel_host import __version__
from poel_host.errors import PoelError
from poel_host.jobs import DEFAULT_MAX_ATTEMPTS, JOB_STATES
from poel_host.logs import configure_logging, get_logger
from poel_host.settings import Settings, load_settings

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poel-host",
        description="Poel: a PostgreSQL job worker whose handlers come from installed plugins. "
        "Configured by environment variables (and .env); see the README.",
    )
    parser.add_argument("--version", action="version", version=f"poel-host {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "serve",
        help="run the worker and the HTTP app (health, plugins)",
        description="Claim and run jobs with a greenlet pool of WORKER_CONCURRENCY, and serve "
        "GET /health and GET /plugins on HEALTH_CHECK_HOST:HEALTH_CHECK_PORT. SIGTERM or "
        "SIGINT drains (POEL_SHUTDOWN_TIMEOUT_MS) and exits 0; a second signal exits at once.",
    )
    commands.add_parser(
        "migrate",
        help="create or upgrade Poel's schema and the plugins' tables",
        description="Apply the host's and the loaded plugins' pending SQL migrations in one "
        "transaction under an advisory lock (safe to run from many processes at once).",
    )

    enqueue = commands.add_parser(
        "enqueue",
        help="enqueue one job",
        description="Enqueue a job of TYPE with a JSON object payload. When TYPE's plugin is "
        "installed the payload is validated first. Prints the new job's id.",
    )
    enqueue.add_argument("type", metavar="TYPE", help="job type, e.g. process_new_record")
    enqueue.add_argument(
        "payload",
        metavar="JSON",
        nargs="?",
        default="{}",
        help='payload, a JSON object (default {}); "-" reads standard input',
    )
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--run-at",
        type=_timestamp,
        metavar="ISO8601",
        help="earliest start, e.g. 2026-12-01T09:00:00+00:00",
    )
    when.add_argument("--delay", type=float, metavar="SECONDS", help="start after this delay")
    enqueue.add_argument("--priority", type=int, help="higher runs first (default: the job's)")
    enqueue.add_argument("--queue", help="queue name (default: the job's)")
    enqueue.add_argument(
        "--max-attempts",
        type=int,
        help=f"attempts before failing (default: the job's, else {DEFAULT_MAX_ATTEMPTS})",
    )
    enqueue.add_argument("--unique-key", help="refuse if a live job of TYPE has this key")
    enqueue.add_argument(
        "--allow-unknown",
        action="store_true",
        help="enqueue a TYPE no installed plugin defines, unvalidated",
    )

    plugins = commands.add_parser(
        "plugins",
        help="list loaded plugins and their job types",
        description="What GET /plugins returns: each loaded plugin with its job types, and any "
        "plugin that failed to load.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")

    psql = commands.add_parser(
        "psql",
        help="open psql on Poel's database",
        description="Run psql on the database the other commands use (DATABASE_URL, the "
        "local server, or the embedded PostgreSQL, kept running meanwhile). ARGS go to psql, "
        "e.g. poel-host psql -c 'SELECT 1'. The embedded package's psql is used when "
        "installed, else the one on PATH.",
    )
    psql.usage = "poel-host psql [ARGS ...]"

    jobs = commands.add_parser("jobs", help="inspect jobs", description="Inspect the jobs table.")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = jobs_commands.add_parser("list", help="recent jobs, newest first")
    listing.add_argument("--state", choices=JOB_STATES)
    listing.add_argument("--type", dest="job_type")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    show = jobs_commands.add_parser("show", help="one job with its error history")
    show.add_argument("id", type=int)
    jobs_commands.add_parser("stats", help="how many jobs are in each state")
    cancel = jobs_commands.add_parser("cancel", help="cancel a queued job")
    cancel.add_argument("id", type=int)
    retry = jobs_commands.add_parser(
        "retry", help="queue a failed or cancelled job again with fresh attempts"
    )
    retry.add_argument("id", type=int)

    workers = commands.add_parser(
        "workers",
        help="list the registered workers",
        description="Every `poel-host serve` registered in the database: host, pid, status "
        "(alive, draining, or gone: its heartbeat stopped), version, capacity, plugins, and "
        "how long ago its last heartbeat was. Gone workers are listed until they are "
        "cleaned up (POEL_GONE_WORKERS_KEEP_S).",
    )
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the web dashboard",
        description="Serve the dashboard (queues, jobs and their errors, running jobs, "
        "schedules, workers) on HOST:PORT, loopback by default. Read-only unless "
        "POEL_DASHBOARD_TOKEN is set; payloads are hidden in production unless "
        "POEL_DASHBOARD_PAYLOADS=shown. SIGTERM or SIGINT stops it.",
    )
    dashboard.add_argument("--host", help="address to bind (default POEL_DASHBOARD_HOST)")
    dashboard.add_argument(
        "--port", type=int, help="port, 0 for a free one (default POEL_DASHBOARD_PORT)"
    )
    return parser


def _timestamp(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. +00:00")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after "psql" is psql's (its -h is a host, -c a command), not ours;
    # argparse cannot pass on options that start with "-" untouched.
    passthrough: list[str] = []
    if words[:1] == ["psql"] and words[1:2] != ["--help"]:
        words, passthrough = words[:1], words[1:]
    args = build_parser().parse_args(words)
    args.psql_args = passthrough
    try:
        settings = load_settings()
        configure_logging(
            environment=settings.env, log_format=settings.log_format, level=settings.log_level
        )
        if args.command in _NO_DATABASE:
            return int(COMMANDS[args.command](settings, args) or 0)
        from poel_host.dev_database import database_for

        announce = args.command == "serve"
        with database_for(settings, get_logger(), announce=announce) as resolved:
            try:
                return int(COMMANDS[args.command](resolved, args) or 0)
            except Exception as exc:
                missing = _missing_schema(exc, resolved)
                if missing is None:
                    raise
                raise missing from None
    except PoelError as exc:
        print(f"poel-host: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _missing_schema(exc: Exception, settings: Settings) -> PoelError | None:
    """A query on a database Poel has not migrated yet (a new embedded one, say) fails
    with "relation ... does not exist": say what to run instead of a traceback."""
    import psycopg

    if not isinstance(exc, psycopg.errors.UndefinedTable):
        return None
    from poel_host.errors import SchemaOutOfDate
    from poel_host.settings import redact_dsn

    return SchemaOutOfDate(
        f"Poel's tables are not in schema {settings.schema_name!r} of "
        f"{redact_dsn(settings.dsn)} ({psycopg.errors.UndefinedTable.__name__}: "
        f"{str(exc).splitlines()[0]}): run poel-host migrate (serve does it by itself in "
        "development)"
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.serve import serve

    return serve(settings)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host import migrations
    from poel_host.database import connection_for
    from poel_host.serve import load_selected_plugins

    plugins = load_selected_plugins(settings, get_logger())
    with connection_for(settings, "migrate") as conn:
        applied = migrations.migrate(conn, settings.schema_name, plugins.migrations())
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print(f"schema {settings.schema_name!r} is up to date")
    return 0


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.queue import Queue
    from poel_host.serve import load_selected_plugins

    payload = sys.stdin.read() if args.payload == "-" else args.payload
    plugins = load_selected_plugins(settings, get_logger())
    with Queue.for_settings(settings, plugins.jobs) as queue:
        job_id = queue.enqueue(
            args.type,
            payload,
            run_at=args.run_at,
            delay=args.delay,
            priority=args.priority,
            queue=args.queue,
            max_attempts=args.max_attempts,
            unique_key=args.unique_key,
            allow_unknown=args.allow_unknown,
        )
    print(job_id)
    return 0


def cmd_plugins(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.serve import load_selected_plugins

    description = load_selected_plugins(settings, get_logger()).describe()
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    rows = [
        ("PLUGIN", "VERSION", "JOB TYPE", "EXECUTOR", "QUEUE", "ATTEMPTS", "TIMEOUT", "SCHEDULE")
    ]
    for plugin in description["plugins"]:
        for job in plugin["jobs"] or [{}]:
            rows.append(
                (
                    plugin["name"],
                    plugin["version"] or "-",
                    job.get("type", "-"),
                    job.get("executor", "-"),
                    job.get("queue", "-"),
                    str(job.get("max_attempts", "-")),
                    _or_dash(job.get("timeout")),
                    _schedule(job),
                )
            )
    print(_table(rows))
    if not description["plugins"]:
        print("(no plugins loaded: install one, e.g. pip install poel-records)")
    for failed in description["failed"]:
        print(
            f"FAILED {failed['name']} ({failed['distribution'] or '?'} "
            f"{failed['version'] or ''}): {failed['error']}"
        )
    return 0


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from poel_host.embedded import EmbeddedError, psql_path

    try:
        program = str(psql_path())
    except EmbeddedError:
        found = shutil.which("psql")
        if found is None:
            raise PoelError(
                "no psql here: pip install 'poel-host[embedded]' or install PostgreSQL's client"
            ) from None
        program = found
    return subprocess.run([program, settings.dsn, *args.psql_args], check=False).returncode


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    return _with_store(settings, lambda store: _jobs(store, args))


def cmd_workers(settings: Settings, args: argparse.Namespace) -> int:
    rows = _with_store(settings, lambda store: store.list_workers())
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = [("HOST", "PID", "STATUS", "VERSION", "HEARTBEAT", "STARTED", "CAPACITY", "PLUGINS")]
    for r in rows:
        table.append(
            (
                r["host"],
                str(r["pid"]),
                r["status"],
                r["version"],
                f"{r['heartbeat_age_s']:.1f}s ago",
                r["started_at"].isoformat(timespec="seconds"),
                _capacity(r),
                ", ".join(f"{p['name']} {p['version'] or '?'}" for p in r["plugins"]) or "-",
            )
        )
    print(_table(table))
    if not rows:
        print("(no worker registered: start one with poel-host serve)")
    return 0


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.dashboard.server import serve_dashboard
    from poel_host.serve import load_selected_plugins

    log = get_logger()
    return serve_dashboard(
        settings,
        host=args.host or settings.dashboard_host,
        port=settings.dashboard_port if args.port is None else args.port,
        plugins=load_selected_plugins(settings, log),
        log=log,
    )


def _capacity(worker: dict[str, Any]) -> str:
    parts = [f"{worker['concurrency']} greenlets"]
    if worker["threads"] is not None:
        parts.append(f"{worker['threads']} threads")
    if worker["processes"] is not None:
        parts.append(f"{worker['processes']} processes")
    return ", ".join(parts)


def _with_store(settings: Settings, work: Callable[[Any], T]) -> T:
    """``work(store)`` on one connection of the CLI's own, closed afterwards."""
    from poel_host.database import KeptConnection
    from poel_host.store import Store

    conn = KeptConnection(
        settings.dsn, name="cli", pooler=settings.pooler, connect_timeout=settings.connect_timeout_s
    )
    try:
        return work(Store(settings.schema_name, conn))
    finally:
        conn.close()


def _jobs(store: Any, args: argparse.Namespace) -> int:
    if args.jobs_command == "cancel":
        return _changed(store.cancel_job(args.id), args.id, "cancelled", "queued")
    if args.jobs_command == "retry":
        return _changed(store.retry_job(args.id), args.id, "queued again", "failed or cancelled")
    if args.jobs_command == "show":
        row = store.get_job(args.id)
        if row is None:
            raise PoelError(f"no job with id {args.id}")
        print(json.dumps(row, indent=2, default=str))
    elif args.jobs_command == "stats":
        for state, count in store.count_by_state().items():
            print(f"{state:<10} {count}")
    else:
        rows = store.list_jobs(state=args.state, job_type=args.job_type, limit=args.limit)
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            table = [("ID", "TYPE", "STATE", "ATTEMPTS", "RUN AT", "LAST ERROR")]
            for r in rows:
                table.append(
                    (
                        str(r["id"]),
                        r["job_type"],
                        r["state"],
                        f"{r['attempts']}/{r['max_attempts']}",
                        r["run_at"].isoformat(timespec="seconds"),
                        (r["last_error"] or "")[:60],
                    )
                )
            print(_table(table))
    return 0


def _changed(changed: bool, job_id: int, done: str, wanted: str) -> int:
    if not changed:
        raise PoelError(f"job {job_id} was not changed: it does not exist or is not {wanted}")
    print(f"job {job_id} {done}")
    return 0


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _schedule(job: dict[str, Any]) -> str:
    if not job.get("schedule"):
        return "-"
    return f"{job['schedule']} (next {job['next_run']})"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# Commands that never open a connection: no embedded server is started for them.
_NO_DATABASE = {"plugins"}
COMMANDS = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "enqueue": cmd_enqueue,
    "plugins": cmd_plugins,
    "jobs": cmd_jobs,
    "workers": cmd_workers,
    "psql": cmd_psql,
    "dashboard": cmd_dashboard,
}
