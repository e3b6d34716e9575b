"""The ``poel-host`` command line: serve, migrate, enqueue, plugins, jobs, workers, pause,
resume, pauses, psql, dashboard.

Every error Poel knows about is printed as one line (``poel-host: error: ...``) with the
exit code of its class; settings errors exit 2 and list every bad variable.

This module is the entry point alone: parse (:mod:`poel_host.cli_parser`), load the
settings, find the database, run the command (:mod:`poel_host.cli_commands`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from poel_host.cli_commands import COMMANDS, NO_DATABASE
from poel_host.cli_parser import build_parser
from poel_host.errors import PoelError
from poel_host.logs import configure_logging, get_logger
from poel_host.settings import Settings, load_settings

__all__ = ["build_parser", "main"]


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
        if args.command in NO_DATABASE:
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
    from poel_host.dsn import redact_dsn
    from poel_host.errors import SchemaOutOfDate

    return SchemaOutOfDate(
        f"Poel's tables are not in schema {settings.schema_name!r} of "
        f"{redact_dsn(settings.dsn)} ({psycopg.errors.UndefinedTable.__name__}: "
        f"{str(exc).splitlines()[0]}): run poel-host migrate (serve does it by itself in "
        "development)"
    )
