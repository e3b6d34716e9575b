"""The test server and its throwaway databases: a migrated template, a copy per test.

Tests run against a real PostgreSQL, found through ``POEL_TEST_DATABASE_URL``. Unset, it
is the local server (``POEL_LOCAL_DATABASE_URL``, by default
``postgresql://postgres@127.0.0.1:5432/postgres``) when one answers there; when none does,
or with ``POEL_TEST_DATABASE_URL=embedded``, the session starts an embedded PostgreSQL
(:mod:`poel_host.embedded`) in a temporary folder, tuned to be thrown away (no fsync),
and removes it at the session's end. Its URL is put in ``POEL_TEST_DATABASE_URL`` for the
session's subprocesses. Migrating
once per session and cloning the template (``CREATE DATABASE ... TEMPLATE``) per test is
what keeps a test on a fresh, fully migrated database fast. The template is migrated in
the configured schema (``POEL_SCHEMA``), the one the worker, the queue and the kit's
queries use.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from psycopg import sql

from poel_host import migrations
from poel_host.database import connection, ping
from poel_host.dsn import redact_dsn
from poel_host.embedded import EmbeddedError
from poel_host.errors import PoelError
from poel_host.migrations import Migration

if TYPE_CHECKING:
    from poel_host.embedded import EmbeddedServer

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED = "embedded"
_embedded: EmbeddedServer | None = None
_resolved: str | None = None  # the server unset POEL_TEST_DATABASE_URL resolved to


def server_dsn() -> str:
    """The test server's URL (a user that may create databases), decided once a session."""
    global _resolved
    configured = os.environ.get("POEL_TEST_DATABASE_URL")
    if configured and configured != EMBEDDED and configured != _embedded_url():
        return configured
    if _resolved is None:
        local = os.environ.get("POEL_LOCAL_DATABASE_URL", DEFAULT_SERVER)
        if configured is None and ping(local):
            _resolved = local
        else:
            try:
                _resolved = start_embedded()
            except EmbeddedError as exc:
                why = (
                    "POEL_TEST_DATABASE_URL=embedded"
                    if configured
                    else (
                        f"POEL_TEST_DATABASE_URL is unset and no PostgreSQL answers at "
                        f"{redact_dsn(local)}"
                    )
                )
                raise EmbeddedError(
                    f"{why}; the embedded PostgreSQL cannot be used: {exc}"
                ) from None
    return _resolved


def _embedded_url() -> str | None:
    return None if _embedded is None else _embedded.url


def describe_server() -> str | None:
    """Which server this session's tests used, for the end of pytest's report."""
    if _resolved is None and os.environ.get("POEL_TEST_DATABASE_URL") in (None, EMBEDDED):
        return None
    dsn = server_dsn()
    try:
        with connection(dsn, connect_timeout=2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except PoelError:
        return None
    version = row["server_version"] if row else "?"
    if _embedded is not None:
        return f"embedded PostgreSQL {version} in {_embedded.data_dir}"
    return f"PostgreSQL {version} at {redact_dsn(dsn)}"


def start_embedded() -> str:
    """Start this session's embedded test server (once) and return its URL."""
    global _embedded
    if _embedded is None:
        from poel_host.embedded import THROWAWAY_CONF, EmbeddedServer

        folder = Path(tempfile.mkdtemp(prefix="poel-test-pg-"))
        folder.chmod(0o711)  # as root, the server's own user must get through it
        server = EmbeddedServer(folder / "data", conf=THROWAWAY_CONF)
        try:
            server.attach()
        except BaseException:
            server.remove()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _embedded = server
        atexit.register(stop_embedded)
        os.environ["POEL_TEST_DATABASE_URL"] = server.url
    return _embedded.url


def stop_embedded() -> None:
    """Stop and remove the session's embedded test server, if it started one."""
    global _embedded, _resolved
    server, _embedded = _embedded, None
    _resolved = None
    if server is None:
        return
    if os.environ.get("POEL_TEST_DATABASE_URL") == server.url:
        del os.environ["POEL_TEST_DATABASE_URL"]
    server.remove()
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)


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
