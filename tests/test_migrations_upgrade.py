"""Upgrading a big jobs table while jobs run (issue 18, part 4): a migration that adds a
column and builds an index on a jobs table of a million rows, applied while a real
``poel-host serve`` claims a backlog, stalls its claims for no longer than a moment when
the index is built CONCURRENTLY, outside a transaction; the same migration in a
transaction stops every claim for the whole build. The test measures both, so that it
shows it can fail.

The stall is read from the table: every claim stamps ``started_at`` with its
transaction's start, so a claim that waited on a lock and the next one are as far apart
as the wait. The longest gap between successive claims during the migration is the
longest stall a worker saw.

Two upgrades are measured: the host's own latest migration that builds an index on the
jobs table (0012, the running jobs by owner), taken back once serve runs (serve refuses
a schema that is behind, so it starts on the whole schema) and applied again; and a
plugin's migration that adds a column and builds a heavier index, as a worker of the
previous release would meet it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from poel_host import Migration, migrations

pytestmark = pytest.mark.process

ROWS = 1_000_000
QUEUED = 150_000  # the backlog: lasts the whole test at serve's pace with no-op jobs
# The bound on the concurrent stall: the ALTER's AccessExclusive lock and each phase of
# the build's brief waits take milliseconds; 2 s leaves room for a machine shared by
# other tests and for serve's own pauses (a collection, a slow poll) and is still well
# under a non-concurrent build of this table (the comparison below shows the margin).
MAX_STALL_S = 2.0

# Indexed on an expression over every row, in random order, so that the build takes a
# while (seconds, as a real index of a table this size would).
INDEX_ON = "poel.jobs (job_type, md5(payload::text), created_at)"

CONCURRENT = Migration(
    1,
    "upgrade_concurrently",
    f"""-- poel: no-transaction
ALTER TABLE poel.jobs ADD COLUMN IF NOT EXISTS upgrade_note text;
DROP INDEX CONCURRENTLY IF EXISTS poel.jobs_upgrade_idx;
CREATE INDEX CONCURRENTLY jobs_upgrade_idx ON {INDEX_ON};
""",
)
IN_TRANSACTION = Migration(
    2,
    "upgrade_in_transaction",
    f"""ALTER TABLE poel.jobs ADD COLUMN upgrade_other text;
CREATE INDEX jobs_upgrade_other_idx ON {INDEX_ON};
""",
)


def fill(conn: Any) -> None:
    """A million rows in two statements: mostly finished jobs of two days ago, and a
    backlog of queued no-op jobs for serve to claim."""
    conn.execute(
        """
        INSERT INTO poel.jobs (job_type, payload, state, attempts, run_at, created_at,
                               started_at, finished_at, updated_at)
        SELECT 'test.noop', jsonb_build_object('key', g::text), 'succeeded', 1,
               t, t, t, t, t
        FROM generate_series(1, %(n)s) AS g, (SELECT now() - interval '2 days' AS t) AS ago
        """,
        {"n": ROWS - QUEUED},
    )
    conn.execute(
        """
        INSERT INTO poel.jobs (job_type, payload)
        SELECT 'test.noop', jsonb_build_object('key', g::text) FROM generate_series(1, %(n)s) g
        """,
        {"n": QUEUED},
    )
    conn.execute("VACUUM ANALYZE poel.jobs")  # autovacuum is off on the test server


def server_now(conn: Any) -> Any:
    return conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]


def claims_since(conn: Any, since: Any) -> int:
    row = conn.execute("SELECT count(*) AS n FROM poel.jobs WHERE started_at > %s", [since])
    return int(row.fetchone()["n"])


def longest_stall(conn: Any, start: Any, end: Any) -> float:
    """The longest time without a claim between ``start`` and ``end`` (seconds),
    counting the gaps that overlap the window (a claim waiting when it began counts)."""
    row = conn.execute(
        """
        WITH claims AS (
            SELECT DISTINCT started_at AS t FROM poel.jobs
            WHERE started_at BETWEEN %(start)s - interval '5 s' AND %(end)s + interval '5 s'
            UNION SELECT %(end)s
        ), gaps AS (
            SELECT t, t - lag(t) OVER (ORDER BY t) AS gap FROM claims
        )
        SELECT coalesce(extract(epoch FROM max(gap)), 0)::float AS stall
        FROM gaps WHERE t > %(start)s AND t - gap < %(end)s
        """,
        {"start": start, "end": end},
    ).fetchone()
    return float(row["stall"])


# What migration 0012 changed, taken back: its index gone, the one it dropped back, and
# its record removed, as on a database of the release before it.
BEFORE_0012 = """
DROP INDEX poel.jobs_running_idx;
CREATE INDEX jobs_lease_idx ON poel.jobs (lease_expires_at) WHERE state = 'running';
DELETE FROM poel.migrations WHERE plugin = 'poel-host' AND version = 12;
"""


def upgrade(
    conn: Any, plugin: list[tuple[str, Migration]], expected: list[str] | None = None
) -> tuple[float, float]:
    """Apply ``plugin`` (and whatever host migration is pending) while serve claims;
    (longest stall, migration's duration)."""
    start, began = server_now(conn), time.monotonic()
    applied = migrations.migrate(conn, "poel", plugin)
    took = time.monotonic() - began
    end = server_now(conn)
    if expected is None:
        expected = [f"{owner}:{m.version:04d}_{m.name}" for owner, m in plugin]
    assert applied == expected
    # the backlog lasted: a gap is a stall, not an empty queue
    assert conn.execute("SELECT count(*) AS n FROM poel.jobs WHERE state = 'queued'").fetchone()[
        "n"
    ]
    return longest_stall(conn, start, end), took


@pytest.mark.parametrize("concurrent", [[("poel-upgrade-test", CONCURRENT)]])
def test_a_million_row_upgrade_barely_stalls_claims(poel_conn, serve, wait_for, concurrent):
    fill(poel_conn)
    rows = poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"]
    assert rows >= 1_000_000

    serve(WORKER_CONCURRENCY=20, POEL_POLL_INTERVAL_MS=50)
    start = server_now(poel_conn)
    wait_for(lambda: claims_since(poel_conn, start) > 500, timeout=20, what="claims")

    before = longest_stall(poel_conn, start, server_now(poel_conn))
    with poel_conn.transaction():
        poel_conn.execute(BEFORE_0012)
    host, host_took = upgrade(poel_conn, [], ["poel-host:0012_worker_leases"])
    assert poel_conn.execute(
        "SELECT to_regclass('poel.jobs_running_idx') IS NOT NULL AS built,"
        " to_regclass('poel.jobs_lease_idx') IS NULL AS dropped"
    ).fetchone() == {"built": True, "dropped": True}
    stall, took = upgrade(poel_conn, concurrent)
    index = poel_conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'poel.jobs_upgrade_idx'::regclass"
    ).fetchone()
    assert index["indisvalid"]

    blocked, blocked_took = upgrade(poel_conn, [("poel-upgrade-test", IN_TRANSACTION)])
    print(
        f"\n{rows} rows; longest claim stall before the upgrade {before:.3f} s; "
        f"host 0012: {host:.3f} s over a {host_took:.1f} s migration; "
        f"concurrently: {stall:.3f} s over a {took:.1f} s migration; "
        f"in a transaction: {blocked:.3f} s over a {blocked_took:.1f} s migration"
    )
    assert stall < MAX_STALL_S and host < MAX_STALL_S
    # The same build in a transaction holds the claims for about its whole length: the
    # control that shows the stall measure sees a stall. (Compared with the build's own
    # length and the concurrent stall, not with MAX_STALL_S: on a quiet machine the build
    # took 1.8 s, and the claims waited 1.78 s of it.)
    assert blocked > 0.7 * blocked_took
    assert blocked > 10 * stall
    assert blocked > 0.8 * blocked_took
