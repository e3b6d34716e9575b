"""Schema and migrations: versioned SQL applied in one transaction under an advisory lock,
plugin migrations beside the host's, and a clear error when the schema is behind.

The tests share one database (cloning one per test is slow on a busy server): each works in
its own schema, or with its own plugin and table names, and leaves ``poel`` as migrated.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from poel_host import Migration, migrations
from poel_host.errors import PoelError, SchemaOutOfDate
from poel_host.store import claim_query


def schema_exists(conn, schema: str) -> bool:
    return conn.execute("SELECT to_regnamespace(%s) IS NOT NULL AS ok", [schema]).fetchone()["ok"]


def table_exists(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL AS ok", [name]).fetchone()["ok"]


def host_names() -> list[str]:
    return [f"poel-host:{m.version:04d}_{m.name}" for m in migrations.host_migrations()]


def test_host_migrations_are_numbered_files():
    found = migrations.host_migrations()
    assert found, "the host ships at least the jobs table"
    versions = [m.version for m in found]
    assert versions == sorted(set(versions))
    assert found[0].version == 1 and found[0].name == "jobs"


def test_migrate_is_idempotent(poel_conn):
    # poel_dsn's database is migrated already: nothing more to do, however often it runs
    assert migrations.migrate(poel_conn, "poel") == []
    assert migrations.migrate(poel_conn, "poel") == []
    # a fresh schema gets every host migration once
    assert migrations.migrate(poel_conn, "other_jobs") == host_names()
    assert migrations.migrate(poel_conn, "other_jobs") == []
    assert table_exists(poel_conn, "other_jobs.jobs")
    recorded = poel_conn.execute(
        "SELECT plugin, version FROM other_jobs.migrations ORDER BY version"
    ).fetchall()
    assert [(r["plugin"], r["version"]) for r in recorded] == [
        ("poel-host", m.version) for m in migrations.host_migrations()
    ]


def test_schema_name_is_quoted(poel_conn):
    migrations.migrate(poel_conn, "Mixed_Case")
    assert table_exists(poel_conn, '"Mixed_Case".jobs')
    job = poel_conn.execute("""SELECT "Mixed_Case".enqueue('x') AS id""").fetchone()
    assert job["id"] == 1


def test_pending_lists_plugin_migrations(poel_conn):
    first = Migration(1, "widgets", "CREATE TABLE public.widgets (id int, name text)")
    second = Migration(2, "widget_names", "CREATE INDEX ON public.widgets (name)")
    plugin = [("poel-widgets", second), ("poel-widgets", first)]
    assert migrations.pending(poel_conn, "poel", plugin) == [
        ("poel-widgets", first),
        ("poel-widgets", second),
    ]
    with pytest.raises(SchemaOutOfDate, match="poel-widgets:0001_widgets, poel-widgets:0002"):
        migrations.check_up_to_date(poel_conn, "poel", plugin)

    assert migrations.migrate(poel_conn, "poel", plugin) == [
        "poel-widgets:0001_widgets",
        "poel-widgets:0002_widget_names",
    ]
    assert table_exists(poel_conn, "public.widgets")
    assert migrations.pending(poel_conn, "poel", plugin) == []
    migrations.check_up_to_date(poel_conn, "poel", plugin)

    # a plugin's new version is pending on its own
    third = Migration(3, "widget_sizes", "ALTER TABLE public.widgets ADD COLUMN size int")
    assert migrations.pending(poel_conn, "poel", [*plugin, ("poel-widgets", third)]) == [
        ("poel-widgets", third)
    ]


def test_plugin_sql_is_run_as_written(poel_conn):
    text = (
        "CREATE TABLE public.codes (code text CHECK (code LIKE 'a%'), "
        "meta jsonb DEFAULT '{\"schema\": {}}')"
    )
    migrations.migrate(poel_conn, "poel", [("codes", Migration(1, "codes", text))])
    poel_conn.execute("INSERT INTO public.codes (code) VALUES ('abc')")
    row = poel_conn.execute("SELECT meta FROM public.codes").fetchone()
    assert row["meta"] == {"schema": {}}


def test_failing_migration_rolls_back_its_transaction_and_names_itself(poel_conn):
    plugin = [
        ("poel-fail", Migration(1, "fail_widgets", "CREATE TABLE public.fail_widgets (id int)")),
        ("poel-fail", Migration(2, "broken", "ALTER TABLE public.nope ADD COLUMN x int")),
    ]
    with pytest.raises(PoelError) as info:
        migrations.migrate(poel_conn, "fresh", plugin)
    message = str(info.value)
    assert message.startswith("migration poel-fail 0002_broken failed: ")
    assert 'relation "public.nope" does not exist' in message
    assert "\n" not in message
    # nothing of its transaction is left (the migrations after the host's last one that
    # runs outside a transaction): not the first plugin migration, nor its record; what
    # was committed before it is recorded as applied
    assert schema_exists(poel_conn, "fresh")
    assert not table_exists(poel_conn, "public.fail_widgets")
    assert poel_conn.info.transaction_status.name == "IDLE"
    last_outside = max(m.version for m in migrations.host_migrations() if not m.transaction)
    in_the_transaction = [
        f"poel-host:{m.version:04d}_{m.name}"
        for m in migrations.host_migrations()
        if m.version > last_outside
    ]
    pending = migrations.pending(poel_conn, "fresh", plugin)
    assert [f"{o}:{m.version:04d}_{m.name}" for o, m in pending if o == "poel-host"] == (
        in_the_transaction
    )
    # and the fixed migration applies cleanly afterwards
    fixed = [plugin[0], ("poel-fail", Migration(2, "fixed", "SELECT 1"))]
    applied = migrations.migrate(poel_conn, "fresh", fixed)
    assert applied == [*in_the_transaction, "poel-fail:0001_fail_widgets", "poel-fail:0002_fixed"]


def test_check_up_to_date_tells_to_migrate(poel_conn):
    migrations.check_up_to_date(poel_conn, "poel")
    with pytest.raises(SchemaOutOfDate) as info:
        migrations.check_up_to_date(poel_conn, "never_migrated")
    message = str(info.value)
    assert "'never_migrated' is not up to date" in message
    assert "poel-host:0001_jobs" in message
    assert "run `poel-host migrate`" in message
    assert info.value.exit_code == 5

    # a schema one migration behind names just that migration
    migrations.migrate(poel_conn, "behind")
    poel_conn.execute("DELETE FROM behind.migrations WHERE plugin = 'poel-host' AND version = 1")
    with pytest.raises(SchemaOutOfDate, match=r"pending: poel-host:0001_jobs\)"):
        migrations.check_up_to_date(poel_conn, "behind")


def test_concurrent_migrations_apply_once(migrate_at_once):
    """Several processes may run ``poel-host migrate`` at once: one applies, the others
    wait on the advisory lock and find nothing to do."""
    plugin = [("poel-many", Migration(1, "many", "CREATE TABLE public.many_widgets (id int)"))]
    results = migrate_at_once("shared", plugin)
    assert results[:3] == [[], [], []]
    assert results[3] == [*host_names(), "poel-many:0001_many"]


def test_claim_query_reads_the_ready_index_of_each_type(poel_conn):
    query = claim_query("poel", 2)
    poel_conn.execute("SET enable_seqscan = off")
    plan = poel_conn.execute(
        sql.SQL("EXPLAIN ") + query,
        {
            "job_types": ["test.noop", "test.record"],
            "queues": None,
            "limit": 10,
            "owner": "explain",
            "lease_ms": 1000,
            "token": "00000000-0000-4000-8000-000000000000",
        },
    ).fetchall()
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert "jobs_ready_idx" in text, text
