"""The test server and its throwaway databases: a migrated template, a copy per test.

Tests run against a real PostgreSQL, found through ``POEL_TEST_DATABASE_URL``. Migrating
once per session and cloning the template (``CREATE DATABASE ... TEMPLATE``) per test is
what keeps a test on a fresh, fully migrated database fast. The template is migrated in
the configured schema (``POEL_SCHEMA``), the one the worker, the queue and the kit's
queries use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from psycopg import sql

from poel_host import migrations
from poel_host.database import connection
from poel_host.migrations import Migration

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_dsn() -> str:
    """The test server's URL (a user that may create databases)."""
    return os.environ.get("POEL_TEST_DATABASE_URL", DEFAULT_SERVER)


def dsn_for(database: str, base: str | None = None) -> str:
    """``base`` (the test server's URL) pointing at another database."""
    parts = urlsplit(base or server_dsn())
    return urlunsplit(parts._replace(path="/" + database))


def create_database(name: str, *, template: str | None = None) -> None:
    """(Re)create database ``name``, empty or as a copy of ``template``."""
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def drop_database(name: str) -> None:
    with connection(server_dsn()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_template(
    name: str, schema: str, plugin_migrations: Iterable[tuple[str, Migration]]
) -> None:
    """Database ``name`` with the host's migrations in ``schema`` and the plugins'."""
    create_database(name)
    with connection(dsn_for(name)) as conn:
        migrations.migrate(conn, schema, plugin_migrations)
