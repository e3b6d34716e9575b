"""A least-privilege producer role: it can enqueue but cannot read any job's payload."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from poel_host import Queue
from poel_host.database import connection
from poel_host.testing import dsn_for


@pytest.fixture
def producer_role(poel_dsn: str) -> Iterator[str]:
    """A LOGIN role granted exactly what the README's "Security" section lists."""
    role = f"poel_producer_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    with connection(poel_dsn) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA poel TO {}").format(ident))
        conn.execute(
            sql.SQL(
                "GRANT EXECUTE ON FUNCTION poel.enqueue(text, jsonb, timestamptz, integer,"
                " text, integer, text) TO {}"
            ).format(ident)
        )
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION poel.enqueue_workflow(text, jsonb) TO {}").format(
                ident
            )
        )
        conn.execute(sql.SQL("GRANT INSERT ON poel.jobs TO {}").format(ident))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE poel.jobs_id_seq TO {}").format(ident))
        conn.execute(
            sql.SQL("GRANT SELECT (id, job_type, unique_key, state) ON poel.jobs TO {}").format(
                ident
            )
        )
    yield role
    with connection(poel_dsn) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def _as(role: str, dsn: str) -> str:
    database = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    return dsn_for(str(database)).replace("postgres@", f"{role}@", 1)


def test_producer_enqueues_through_sql_and_python_but_reads_no_payload(
    producer_role, poel_dsn, poel_plugins, poel_conn
):
    dsn = _as(producer_role, poel_dsn)
    with connection(dsn) as conn:
        job_id = conn.execute(
            "SELECT poel.enqueue('test.record', '{\"key\": \"sql\"}'::jsonb) AS id"
        ).fetchone()["id"]
        assert job_id is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM poel.jobs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE poel.jobs SET state = 'cancelled'")
    with Queue(dsn, jobs=poel_plugins.jobs) as queue:
        python_id = queue.enqueue("test.record", {"key": "python"}, unique_key="once")
        assert queue.enqueue_many([]) == []
    rows = poel_conn.execute(
        "SELECT id, payload FROM poel.jobs WHERE id = ANY(%s) ORDER BY id", [[job_id, python_id]]
    ).fetchall()
    assert [r["payload"]["key"] for r in rows] == ["sql", "python"]


def test_producer_enqueues_a_workflow_through_sql_and_python(
    producer_role, poel_dsn, poel_plugins, poel_conn
):
    from poel_host import Workflow

    dsn = _as(producer_role, poel_dsn)
    with connection(dsn) as conn:
        conn.execute('SELECT poel.enqueue_workflow(\'w\', \'[{"step": "a", "job_type": "x"}]\')')
    flow = Workflow("python")
    first = flow.step("a", "test.record", {"key": "a"})
    flow.step("b", "test.record", {"key": "b"}, after=first)
    with Queue(dsn, jobs=poel_plugins.jobs) as queue:
        assert queue.enqueue_workflow(flow) > 0
    count = poel_conn.execute("SELECT count(*) AS n FROM poel.jobs WHERE step IS NOT NULL")
    assert count.fetchone()["n"] == 3


def test_enqueue_function_is_not_executable_by_public(poel_conn):
    row = poel_conn.execute(
        "SELECT has_function_privilege('public', 'poel.enqueue(text, jsonb, timestamptz,"
        " integer, text, integer, text)', 'EXECUTE') AS public_can,"
        " has_function_privilege('public', 'poel.enqueue_workflow(text, jsonb)', 'EXECUTE')"
        " AS public_can_workflow,"
        " has_function_privilege('public', 'poel.steps_ended(bigint[])', 'EXECUTE')"
        " AS public_can_end"
    ).fetchone()
    assert row == {"public_can": False, "public_can_workflow": False, "public_can_end": False}


def test_a_role_granted_what_the_readme_lists_waits_for_a_result(
    producer_role, poel_dsn, poel_conn
):
    ident = sql.Identifier(producer_role)
    poel_conn.execute(sql.SQL("GRANT SELECT ON poel.all_jobs TO {}").format(ident))
    poel_conn.execute(
        sql.SQL("GRANT INSERT, SELECT, DELETE ON poel.result_waiters TO {}").format(ident)
    )
    job_id = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload, state, finished_at, result)"
        " VALUES ('test.record', '{}', 'succeeded', now(), '{\"n\": 1}') RETURNING id"
    ).fetchone()["id"]
    queued = poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, payload) VALUES ('test.record', '{}') RETURNING id"
    ).fetchone()["id"]
    with Queue(_as(producer_role, poel_dsn)) as queue:
        assert queue.result(job_id, timeout=5) == {"n": 1}
        with pytest.raises(TimeoutError):
            queue.result(queued, timeout=0.2)  # registered, waited, and removed itself
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.result_waiters").fetchone()["n"] == 0
