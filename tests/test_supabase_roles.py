"""Issue 17: on a database with Supabase's roles, Poel's schema stays closed to the API's
roles (``anon``, ``authenticated``) even once exposed as Supabase's guide says, and the
README's one grant lets ``service_role`` (the app's server side) enqueue.

The roles are made the way Supabase's image makes them: ``anon``, ``authenticated`` and
``service_role`` cannot log in; PostgREST logs in as ``authenticator`` (granted all three,
inheriting none) and switches to the request's role with ``SET ROLE``. Roles belong to the
whole server, so they are created once and kept (another run may be using them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from poel_host.database import connection
from poel_host.testing import dsn_for

API_ROLES = ("anon", "authenticated")
ENQUEUE = "poel.enqueue(text, jsonb, timestamptz, integer, text, integer, text)"
MAKE_ROLES = """
DO $$
BEGIN
    CREATE ROLE anon NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE authenticator LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
GRANT anon, authenticated, service_role TO authenticator;
"""


@pytest.fixture
def supabase_dsn(poel_dsn: str) -> Iterator[str]:
    """The test's database with Supabase's roles, its ``poel`` schema exposed to the API
    as Supabase's guide starts (USAGE for the three roles); the DSN of ``authenticator``."""
    with connection(poel_dsn) as conn:
        try:
            conn.execute(MAKE_ROLES)
        except psycopg.errors.UniqueViolation:  # another run made them at the same moment
            conn.execute(MAKE_ROLES)
        conn.execute("GRANT USAGE ON SCHEMA poel TO anon, authenticated, service_role")
    database = psycopg.conninfo.conninfo_to_dict(poel_dsn)["dbname"]
    yield dsn_for(str(database)).replace("postgres@", "authenticator@", 1)


@contextmanager
def as_role(dsn: str, role: str) -> Iterator[Any]:
    """A connection as PostgREST makes one: ``authenticator``, then the request's role."""
    with connection(dsn) as conn:
        conn.execute(f"SET ROLE {role}")
        yield conn


def test_every_object_in_poels_schema_is_closed_to_the_api_roles(supabase_dsn, poel_conn):
    # Every table, sequence and function there is, now and after any future migration.
    objects = poel_conn.execute(
        "SELECT c.oid::regclass::text AS name, c.relkind::text AS kind FROM pg_class c"
        " WHERE c.relnamespace = 'poel'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        " UNION ALL SELECT p.oid::regprocedure::text, 'f' FROM pg_proc p"
        " WHERE p.pronamespace = 'poel'::regnamespace"
    ).fetchall()
    assert {
        "poel.jobs",
        "poel.enqueue(text,jsonb,timestamp with time zone,integer,text,integer,text)",
    } <= {o["name"] for o in objects}
    reachable = []
    for role in API_ROLES:
        for o in objects:
            if o["kind"] == "f":
                check = "has_function_privilege(%s, %s::regprocedure, 'EXECUTE')"
            elif o["kind"] == "S":
                check = "has_sequence_privilege(%s, %s::regclass, 'USAGE, SELECT, UPDATE')"
            else:
                check = (
                    "has_table_privilege(%s, %s::regclass,"
                    " 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')"
                    " OR has_any_column_privilege(%s, %s::regclass, 'SELECT, INSERT, UPDATE')"
                )
            args = [role, o["name"]] * check.count("%s::")
            if poel_conn.execute(f"SELECT {check} AS yes", args).fetchone()["yes"]:
                reachable.append((role, o["name"]))
    assert reachable == []


@pytest.mark.parametrize("role", API_ROLES)
def test_the_api_roles_can_neither_read_jobs_nor_enqueue(supabase_dsn, role):
    with as_role(supabase_dsn, role) as conn:
        for statement in (
            "SELECT payload FROM poel.jobs",
            "SELECT poel.enqueue('test.record', '{\"key\": \"anon\"}'::jsonb)",
            "INSERT INTO poel.jobs (job_type) VALUES ('test.record')",
            "SELECT poel.iso_utc(now())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_service_role_enqueues_with_the_readmes_grant_and_a_worker_runs_it(
    supabase_dsn, poel_conn, serve, wait_sql
):
    with (
        as_role(supabase_dsn, "service_role") as conn,  # not without the grant
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT poel.enqueue('test.record', '{\"key\": \"early\"}'::jsonb)")
    poel_conn.execute(f"GRANT EXECUTE ON FUNCTION {ENQUEUE} TO service_role")  # the README's
    serve()
    with as_role(supabase_dsn, "service_role") as conn:
        job_id = conn.execute(
            "SELECT poel.enqueue('test.record', '{\"key\": \"from-supabase\"}'::jsonb) AS id"
        ).fetchone()["id"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM poel.jobs")  # enqueue only
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [job_id])
