"""The ``poel-host`` command line's arguments: every command's options and help text.

Kept apart from what the commands do (:mod:`poel_host.cli_commands`) and from the entry
point (:mod:`poel_host.cli`): the help is read and changed on its own, and building the
parser imports nothing of the database.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from poel_host import __version__
from poel_host.jobs import DEFAULT_MAX_ATTEMPTS, JOB_STATES
from poel_host.workflows import WORKFLOW_STATES


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
    cancel = jobs_commands.add_parser(
        "cancel", help="cancel a queued job, or stop a running one (it ends cancelled)"
    )
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

    _pause_commands(commands)
    _steer_commands(commands)
    _workflow_commands(commands)

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


def _workflow_commands(commands: Any) -> None:
    workflows = commands.add_parser(
        "workflows",
        help="list workflows, show one with its steps, cancel or retry one",
        description="Workflows (Queue.enqueue_workflow, poel.enqueue_workflow()): their "
        "state (running, succeeded, failed naming the step, cancelled) and their steps' "
        "states (waiting while a step's dependencies have not all ended), attempts and "
        "errors; cancelling or retrying one whole.",
    )
    chosen = workflows.add_subparsers(dest="workflows_command", metavar="ACTION", required=True)
    listing = chosen.add_parser("list", help="the newest workflows first")
    listing.add_argument("--state", choices=WORKFLOW_STATES)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = chosen.add_parser("show", help="one workflow and each of its steps")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cancel = chosen.add_parser(
        "cancel",
        help="cancel a workflow's steps that have not ended, and the workflow",
        description="Waiting and queued steps are cancelled at once; running ones are asked "
        "to stop (each ends cancelled within about a second, on any executor; one that "
        "returned first succeeded). The workflow is cancelled; its succeeded steps keep "
        "their results. Cancelling it again, or a workflow that ended, changes nothing and "
        "says so (exit 0). An unknown id exits 1.",
    )
    cancel.add_argument("id", type=int)
    retry = chosen.add_parser(
        "retry",
        help="run a failed or cancelled workflow's failed and cancelled steps again",
        description="Its failed and cancelled steps are queued again with fresh attempts "
        "(error history kept), each waiting for the steps it depends on that run again; "
        "succeeded steps keep their results and are not run again. The workflow runs "
        "again. Refused (exit 1) while it or any of its steps is running; a workflow that "
        "succeeded has nothing to retry (exit 0).",
    )
    retry.add_argument("id", type=int)


def _pause_commands(commands: Any) -> None:
    what = (
        "Paused jobs wait, queued, until resumed: no worker claims them from the moment "
        "the command returns; running jobs finish; enqueueing and schedules go on. "
    )
    pause = commands.add_parser(
        "pause",
        help="stop workers claiming a queue's or a job type's jobs",
        description=what + "A name no job has yet may be paused. Pausing what is paused "
        "already changes nothing and says so (exit 0). A bad name exits 2.",
    )
    _pause_target(pause)
    pause.add_argument("--reason", help="why, shown by poel-host pauses and the dashboard")
    pause.add_argument("--by", help="who paused it (default: the database user)")
    resume = commands.add_parser(
        "resume",
        help="let workers claim a paused queue's or job type's jobs again",
        description="Resume a paused queue or job type: idle workers are woken and claim "
        "its jobs at once. Exits 1 if it was not paused, 2 for a bad name.",
    )
    _pause_target(resume)
    pauses = commands.add_parser(
        "pauses",
        help="list the paused queues and job types",
        description=what + "Lists each pause: kind, name, since when, by whom, why.",
    )
    pauses.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _pause_target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--queue", metavar="NAME", help="a queue, e.g. default")
    target.add_argument("--type", dest="job_type", metavar="TYPE", help="a job type")


def _steer_commands(commands: Any) -> None:
    what = (
        "Steering holds on every worker at once, enforced by the database: at most N slots "
        "of a job type or a queue running, at most N starts per window, for each job key "
        "apart (--per-key), or in weighted fair turn between keys (--fair). "
    )
    steer = commands.add_parser(
        "steer",
        help="limit a job type's or a queue's running jobs and starts",
        description=what + "This sets an operator's limit: it replaces the job type's or "
        "queue's steering whole (what is left out is unset) and no serve overwrites it "
        "with its Job's options until poel-host unsteer. A value that cannot be set exits 2.",
    )
    _steer_target(steer)
    steer.add_argument("--concurrency", type=int, metavar="N", help="at most N slots running")
    steer.add_argument("--rate", type=int, metavar="N", help="at most N starts a window")
    steer.add_argument(
        "--per", type=float, metavar="SECONDS", help="the rate's window (default 1 second)"
    )
    steer.add_argument(
        "--per-key", action="store_true", help="a job type's limits hold for each key apart"
    )
    steer.add_argument(
        "--fair", action="store_true", help="claim a job type's keys in weighted turn"
    )
    steer.add_argument(
        "--weight", type=int, default=1, metavar="N", help="slots each job of the type takes"
    )
    steer.add_argument(
        "--key-weight",
        action="append",
        metavar="KEY=N",
        help="a key's weight in fair turns (1 for keys not named); repeat for more keys",
    )
    steer.add_argument("--key-field", metavar="F", help="the payload field that is a job's key")
    unsteer = commands.add_parser(
        "unsteer",
        help="remove a job type's or a queue's steering",
        description="Remove the steering of a job type or a queue, whoever set it: its jobs "
        "are claimed without limits (a job type whose Job declares options gets them back "
        "when a serve next starts). Exits 1 if it was not steered, 2 for a bad name.",
    )
    _steer_target(unsteer)
    steering = commands.add_parser(
        "steering",
        help="list the steered job types and queues, with what is in use now",
        description=what + "Lists each steering: its limits, the slots running now, the "
        "starts in the current rate window, and who set it (code or operator).",
    )
    steering.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _steer_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("type", "queue"), help="a job type or a queue")
    parser.add_argument("name", help="its name, e.g. process_new_record or default")


def _timestamp(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. +00:00")
    return value
