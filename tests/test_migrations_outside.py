"""Migrations that do not stop the queue (issue 18, part 4): a migration may run outside a
transaction (``CREATE INDEX CONCURRENTLY``), migrators stay serialised across it, and a
statement that cannot take its lock in time fails with a message saying what to do
instead of queueing every claim behind it.

Like ``test_migrations``, each test uses its own plugin and table names in ``public``.
"""

from __future__ import annotations

import time

import gevent
import psycopg
import pytest

from poel_host import Migration, PackageSql, migrations
from poel_host.database import connection
from poel_host.errors import PoelError
from poel_host.sqlsplit import split_statements

CONCURRENT_INDEX = """-- poel: no-transaction
-- A failed build leaves an INVALID index: dropped first, so that a re-run builds it again.
DROP INDEX CONCURRENTLY IF EXISTS public.{table}_v_idx;
CREATE {unique} INDEX CONCURRENTLY {table}_v_idx ON public.{table} (v);
"""


def index_valid(conn, name: str) -> bool | None:
    row = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
    ).fetchone()
    return None if row is None else bool(row["indisvalid"])


def recorded(conn, owner: str) -> list[int]:
    rows = conn.execute(
        "SELECT version FROM poel.migrations WHERE plugin = %s ORDER BY version", [owner]
    ).fetchall()
    return [r["version"] for r in rows]


def column_exists(conn, table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attname = %s AND NOT attisdropped",
        [table, column],
    ).fetchone()
    return bool(row["n"])


def index_migration(version: int, table: str, *, unique: bool = False) -> Migration:
    text = CONCURRENT_INDEX.format(table=table, unique="UNIQUE" if unique else "")
    return Migration(version, f"{table}_index", text)


# Splitting and the marker ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1;;\n  ;\n-- only a comment;\n", ["SELECT 1"]),
        ("SELECT 'a;b''c;'; SELECT 2", ["SELECT 'a;b''c;'", "SELECT 2"]),
        (r"SELECT E'x\';y'; SELECT 2", [r"SELECT E'x\';y'", "SELECT 2"]),
        (r"SELECT one'; SELECT 2'", [r"SELECT one'; SELECT 2'"]),  # no E: a plain string
        ('CREATE TABLE "a;b" (x int); SELECT 1', ['CREATE TABLE "a;b" (x int)', "SELECT 1"]),
        ("SELECT 1 /* a; b; */ + 1; SELECT 2", None),
        ("SELECT 1 -- a comment; not a split\n + 1; SELECT 2", None),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$; SELECT 2",
            ["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$", "SELECT 2"],
        ),
        (
            "DO $body$ BEGIN PERFORM '$$;'; END $body$; SELECT $1",
            ["DO $body$ BEGIN PERFORM '$$;'; END $body$", "SELECT $1"],
        ),
    ],
)
def test_split_statements(text, expected):
    found = split_statements(text)
    if expected is None:  # the comment stays inside the first statement
        assert len(found) == 2 and found[1] == "SELECT 2", found
    else:
        assert found == expected


def test_the_marker_line_makes_a_migration_run_outside_a_transaction(tmp_path, monkeypatch):
    assert Migration(1, "a", "SELECT 1").transaction is True
    assert Migration(1, "a", "SELECT 1", transaction=False).transaction is False
    assert Migration(1, "a", "-- poel: no-transaction\nSELECT 1").transaction is False
    assert Migration(1, "a", "SELECT 1 -- poel: no-transaction").transaction is True
    # the host's own: 0012, 0018 and 0024 build indexes on the jobs table CONCURRENTLY,
    # 0027 on the workflows' tables
    outside = [m.version for m in migrations.host_migrations() if not m.transaction]
    assert outside == [12, 18, 24, 27]
    # a plugin's files are read through the same dataclass
    folder = tmp_path / "marked_plugin" / "sql" / "migrations"
    folder.mkdir(parents=True)
    (tmp_path / "marked_plugin" / "__init__.py").write_text("")
    (folder / "0001_plain.sql").write_text("CREATE TABLE t (v int);\n")
    (folder / "0002_index.sql").write_text(CONCURRENT_INDEX.format(table="t", unique=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    package = PackageSql("marked_plugin")
    assert package.migration(1, "plain").transaction is True
    assert package.migration(2, "index").transaction is False


# Running outside a transaction -------------------------------------------------------------


def test_a_concurrent_index_builds_between_transactional_migrations(poel_conn):
    plugin = [
        ("poel-cx", Migration(1, "cx", "CREATE TABLE public.cx (id int, v int)")),
        ("poel-cx", index_migration(2, "cx")),
        ("poel-cx", Migration(3, "cx_w", "ALTER TABLE public.cx ADD COLUMN w int")),
    ]
    assert migrations.migrate(poel_conn, "poel", plugin) == [
        "poel-cx:0001_cx",
        "poel-cx:0002_cx_index",
        "poel-cx:0003_cx_w",
    ]
    assert index_valid(poel_conn, "public.cx_v_idx") is True
    assert column_exists(poel_conn, "public.cx", "w")
    assert recorded(poel_conn, "poel-cx") == [1, 2, 3]
    assert migrations.migrate(poel_conn, "poel", plugin) == []
    # the session's settings are as they were, the lock released
    assert poel_conn.execute("SHOW lock_timeout").fetchone()["lock_timeout"] == "0"
    locks = poel_conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'")
    assert locks.fetchone()["n"] == 0


def test_a_failure_part_way_is_rerun_from_the_start(poel_conn):
    plugin = [
        (
            "poel-cy",
            Migration(
                1, "cy", "CREATE TABLE public.cy (v int); INSERT INTO public.cy VALUES (1), (1)"
            ),
        ),
        ("poel-cy", index_migration(2, "cy", unique=True)),
    ]
    with pytest.raises(PoelError) as info:
        migrations.migrate(poel_conn, "poel", plugin)
    message = str(info.value)
    assert message.startswith("migration poel-cy 0002_cy_index failed: could not create unique")
    assert "runs outside a transaction" in message and "again from its start" in message
    # the migration before it committed; the failed build left an INVALID index behind
    assert recorded(poel_conn, "poel-cy") == [1]
    assert index_valid(poel_conn, "public.cy_v_idx") is False

    poel_conn.execute("DELETE FROM public.cy WHERE ctid = (SELECT min(ctid) FROM public.cy)")
    assert migrations.migrate(poel_conn, "poel", plugin) == ["poel-cy:0002_cy_index"]
    assert index_valid(poel_conn, "public.cy_v_idx") is True


def test_concurrent_migrators_apply_each_migration_once_across_one_outside(
    poel_dsn, migrate_at_once
):
    """While one migrator builds an index concurrently the others poll for the lock: had
    they waited in pg_advisory_lock, each would hold a snapshot the build waits for."""
    with connection(poel_dsn) as conn:
        conn.execute("CREATE TABLE public.cz AS SELECT g AS v FROM generate_series(1, 50000) g")
    plugin = [
        ("poel-cz", index_migration(1, "cz")),
        ("poel-cz", Migration(2, "cz_w", "ALTER TABLE public.cz ADD COLUMN w int")),
    ]
    results = migrate_at_once("poel", plugin)
    assert results == [[], [], [], ["poel-cz:0001_cz_index", "poel-cz:0002_cz_w"]]


# lock_timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize("transaction", [True, False])
def test_a_lock_held_by_a_long_transaction_fails_fast_and_says_what_to_do(poel_dsn, transaction):
    text = (
        "CREATE TABLE IF NOT EXISTS public.half_done (id int);"
        " ALTER TABLE poel.jobs ADD COLUMN IF NOT EXISTS half int"
    )
    plugin = [("poel-half", Migration(1, "half", text, transaction=transaction))]
    with connection(poel_dsn) as conn, connection(poel_dsn, autocommit=False) as blocker:
        blocker.execute("SELECT id FROM poel.jobs FOR UPDATE")  # and stays open
        blocker_pid = blocker.info.backend_pid
        started = time.monotonic()
        with pytest.raises(PoelError) as info:
            migrations.migrate(conn, "poel", plugin, lock_timeout_ms=300)
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert message.startswith(
            "migration poel-half 0001_half could not take a lock within 300 ms"
            " (POEL_MIGRATION_LOCK_TIMEOUT_MS)"
        ), message
        assert f"pid {blocker_pid} (role postgres" in message
        assert "pg_stat_activity" in message and "run `poel-host migrate` again" in message
        assert "\n" not in message
        # nothing half applied: in a transaction nothing at all; outside one, the statement
        # before stays (and is written to be re-run), the migration is not recorded
        assert column_exists(conn, "poel.jobs", "half") is False
        assert bool(
            conn.execute("SELECT to_regclass('public.half_done') AS t").fetchone()["t"]
        ) is (not transaction)
        assert recorded(conn, "poel-half") == []
        assert ("rolled back" in message) is transaction

        blocker.rollback()
        assert migrations.migrate(conn, "poel", plugin, lock_timeout_ms=300) == [
            "poel-half:0001_half"
        ]
        assert column_exists(conn, "poel.jobs", "half")


def test_a_concurrent_build_waits_for_old_transactions_past_the_lock_timeout(poel_dsn, wait_for):
    """CREATE INDEX CONCURRENTLY waits for every older snapshot, with locks that stop no
    claim: a lock_timeout would cancel it and leave an INVALID index, so it has none."""
    with connection(poel_dsn) as conn:
        conn.execute("CREATE TABLE public.cw (v int)")
    plugin = [("poel-cw", index_migration(1, "cw"))]
    with connection(poel_dsn, autocommit=False) as old, connection(poel_dsn) as watcher:
        old.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        old.execute("SELECT count(*) FROM poel.jobs")  # keeps its snapshot until it ends

        def run() -> list[str]:
            with connection(poel_dsn) as conn:
                return migrations.migrate(conn, "poel", plugin, lock_timeout_ms=100)

        migrator = gevent.spawn(run)

        def waited() -> bool:
            row = watcher.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event = 'virtualxid'"
                " AND query LIKE 'CREATE%CONCURRENTLY%' AND now() - query_start > interval '1 s'"
            ).fetchone()
            return bool(row["n"])

        wait_for(waited, timeout=10, what="the build to wait ten times the lock timeout")
        assert not migrator.ready()
        old.rollback()
        migrator.join(timeout=10)
        assert migrator.value == ["poel-cw:0001_cw_index"], migrator.exception
        assert index_valid(watcher, "public.cw_v_idx") is True


def test_the_cli_takes_the_lock_timeout_from_the_environment(poel_dsn, poel_cli):
    """``POEL_MIGRATION_LOCK_TIMEOUT_MS`` reaches ``migrate``; a lock on the run's own
    bookkeeping is refused as clearly as one on a migration's table."""
    with connection(poel_dsn, autocommit=False) as blocker:
        blocker.execute("LOCK TABLE poel.migrations IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = poel_cli(
            "migrate",
            DATABASE_URL=poel_dsn,
            POEL_LOAD_PLUGINS="",
            POEL_MIGRATION_LOCK_TIMEOUT_MS=300,
        )
        assert time.monotonic() - started < 30
        assert result.returncode != 0
        assert "migrate could not take a lock within 300 ms" in result.stderr, result.stderr
        assert f"pid {blocker.info.backend_pid} " in result.stderr
        assert "Traceback" not in result.stderr
    result = poel_cli("migrate", DATABASE_URL=poel_dsn, POEL_LOAD_PLUGINS="")
    assert result.returncode == 0, result.stderr
