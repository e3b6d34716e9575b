"""Saying when the server is the problem (issue 18, part 5): ``serve`` warns at start when
autovacuum cannot clean the jobs table, and ``/metrics`` shows the table as the server's
statistics see it (live and dead row versions, the last vacuum's age, sizes).

The CI server runs with autovacuum off, so there every ``serve`` warns; the table's own
option is tested by setting it, and whichever causes are off are named together.
"""

from __future__ import annotations

import math
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from poel_host.autovacuum import WARNING, autovacuum_off, check_autovacuum
from poel_host.database import connection
from poel_host.store import Store
from poel_host.testing import dsn_for
from poel_host.worker.metrics import JobsTable, Metrics

SERVER_OFF = "the server's autovacuum setting is off"
TABLE_OFF = "the table option autovacuum_enabled = false on poel.jobs"
RESET = "ALTER TABLE poel.jobs RESET (autovacuum_enabled)"
ALL_ON = {"server_autovacuum": True, "track_counts": True, "table_autovacuum": None}


def server_autovacuum(conn: Any) -> bool:
    row = conn.execute("SELECT current_setting('autovacuum')::boolean AS enabled").fetchone()
    return bool(row["enabled"])


# The warning's text, whatever the server's settings ------------------------------------


def test_nothing_to_say_when_autovacuum_can_run_or_there_is_no_table() -> None:
    assert autovacuum_off(ALL_ON, "poel") is None
    assert autovacuum_off({**ALL_ON, "table_autovacuum": True}, "poel") is None
    assert autovacuum_off(None, "poel") is None


def test_each_cause_is_named_with_its_fix_and_why_it_matters() -> None:
    table = autovacuum_off({**ALL_ON, "table_autovacuum": False}, "poel")
    assert table is not None
    assert table["off"] == [TABLE_OFF]
    assert table["hint"] == RESET  # nothing to reload for a table option
    assert table["table"] == "poel.jobs"
    for words in ("dead row versions", "claim index", "latency", "VACUUM"):
        assert words in table["why"]

    everything = autovacuum_off(
        {"server_autovacuum": False, "track_counts": False, "table_autovacuum": False}, "poel"
    )
    assert everything is not None
    assert everything["off"] == [
        SERVER_OFF,
        "the server's track_counts setting is off (autovacuum needs it)",
        TABLE_OFF,
    ]
    assert everything["hint"] == (
        "ALTER SYSTEM SET autovacuum = on (or set it in postgresql.conf); "
        "ALTER SYSTEM SET track_counts = on; SELECT pg_reload_conf(); " + RESET
    )


def test_a_schema_that_needs_quotes_is_quoted_in_the_fix() -> None:
    fields = autovacuum_off({**ALL_ON, "table_autovacuum": False}, 'My "Jobs"')
    assert fields is not None
    assert fields["hint"] == 'ALTER TABLE "My ""Jobs""".jobs RESET (autovacuum_enabled)'


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def debug(self, msg: str, **fields: Any) -> None:
        self.lines.append(("debug", msg, fields))

    def warning(self, msg: str, **fields: Any) -> None:
        self.lines.append(("warning", msg, fields))


class RefusingStore:
    schema = "poel"

    def autovacuum_settings(self, connection: Any = None) -> Any:
        raise psycopg.errors.InsufficientPrivilege("permission denied for table pg_class")


def test_settings_that_cannot_be_read_skip_the_check_at_debug_and_never_fail_start() -> None:
    log = Log()
    check_autovacuum(RefusingStore(), None, log)  # type: ignore[arg-type]
    assert [(level, msg) for level, msg, _ in log.lines] == [
        ("debug", "autovacuum settings not readable; not checked")
    ]
    assert "permission denied" in log.lines[0][2]["error"]


@pytest.fixture
def bare_role_dsn(poel_dsn: str) -> Iterator[str]:
    """The test database as a LOGIN role granted nothing at all."""
    role = f"poel_bare_{uuid.uuid4().hex[:8]}"
    with connection(poel_dsn) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    database = psycopg.conninfo.conninfo_to_dict(poel_dsn)["dbname"]
    yield dsn_for(str(database)).replace("postgres@", f"{role}@", 1)
    with connection(poel_dsn) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_granted_nothing_reads_the_settings_and_the_statistics(
    bare_role_dsn: str, poel_conn: Any
) -> None:
    with connection(bare_role_dsn) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM poel.jobs")
        store = Store("poel")
        settings = store.autovacuum_settings(conn)
        stats = store.jobs_table_stats(conn)
    assert settings is not None and settings["table_autovacuum"] is None
    assert settings["server_autovacuum"] == server_autovacuum(poel_conn)
    assert stats is not None and stats["table_bytes"] >= 0
    assert "jobs_ready_idx" in stats["index_bytes"]
    assert Store("elsewhere").autovacuum_settings(poel_conn) is None  # no such table


# /metrics without a database ----------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_the_table_gauges_have_no_samples_until_read_and_nan_for_never_vacuumed() -> None:
    metrics = Metrics(dict)
    text = metrics.render()[0].decode()
    assert "# TYPE poel_jobs_table_dead_tuples gauge" in text
    assert not [key for key in samples(text) if key[0].startswith("poel_jobs_table")]

    metrics.jobs_table = JobsTable(
        live_tuples=10,
        dead_tuples=30,
        last_vacuum_age_s=math.nan,
        autovacuums=0,
        table_bytes=8192,
        index_bytes={"jobs_ready_idx": 16384, "jobs_pkey": 16384},
    )
    found = samples(metrics.render()[0].decode())
    assert found["poel_jobs_table_live_tuples", ()] == 10
    assert found["poel_jobs_table_dead_tuples", ()] == 30
    assert math.isnan(found["poel_jobs_table_last_vacuum_age_seconds", ()])
    assert found["poel_jobs_table_autovacuums_total", ()] == 0
    assert found["poel_jobs_table_size_bytes", ()] == 8192
    assert found["poel_jobs_index_size_bytes", (("index", "jobs_ready_idx"),)] == 16384


# A real serve on the test server -------------------------------------------------------


@pytest.mark.process
def test_serve_warns_once_naming_the_table_option_and_the_server_setting(
    serve: Any, poel_conn: Any
) -> None:
    poel_conn.execute("ALTER TABLE poel.jobs SET (autovacuum_enabled = false)")
    worker = serve()

    warning = worker.wait_log(WARNING)
    assert warning["level"] == "warning"
    assert warning["table"] == "poel.jobs"
    assert TABLE_OFF in warning["off"]
    # On this CI server autovacuum is off too: both causes are named, in one line.
    assert (SERVER_OFF in warning["off"]) == (not server_autovacuum(poel_conn))
    assert RESET in warning["hint"]
    assert "dead row versions" in warning["why"] and "latency" in warning["why"]
    assert len([e for e in worker.logs if e["msg"] == WARNING]) == 1
    assert worker.stop() == 0


@pytest.mark.process
def test_serve_names_the_server_setting_alone_when_the_table_leaves_it_alone(
    serve: Any, poel_conn: Any
) -> None:
    worker = serve()  # the warning comes before "worker started", which serve waited for

    warning = worker.find_log(WARNING)
    if server_autovacuum(poel_conn):
        assert warning is None
    else:
        assert warning is not None and warning["off"] == [SERVER_OFF]
        assert "ALTER SYSTEM SET autovacuum = on" in warning["hint"]
        assert "RESET" not in warning["hint"]
    assert worker.stop() == 0


def scrape(worker: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(worker.url("/metrics"), timeout=10) as response:
        return samples(response.read().decode())


STATS = """
SELECT n_live_tup AS live, n_dead_tup AS dead, autovacuum_count AS autovacuums,
       extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum))::float8 AS age,
       pg_relation_size('poel.jobs') AS table_bytes,
       pg_relation_size('poel.jobs_ready_idx') AS claim_index_bytes
FROM pg_stat_user_tables WHERE schemaname = 'poel' AND relname = 'jobs'
"""


def matching(worker: Any, conn: Any) -> dict[str, Any] | None:
    """The server's statistics if /metrics shows the same, read around one scrape."""
    before = conn.execute(STATS).fetchone()
    found = scrape(worker)
    after = conn.execute(STATS).fetchone()
    if {k: v for k, v in before.items() if k != "age"} != {
        k: v for k, v in after.items() if k != "age"
    }:
        return None  # the statistics moved meanwhile: try again

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, tuple(sorted(labels.items()))))

    age = value("poel_jobs_table_last_vacuum_age_seconds")
    if age is None:
        return None  # not read yet
    if after["age"] is None:
        ages_match = math.isnan(age)
    else:  # read at most an interval (0.2 s) before the scrape
        ages_match = after["age"] - 2 <= age <= after["age"] + 0.01
    same = (
        value("poel_jobs_table_live_tuples") == after["live"]
        and value("poel_jobs_table_dead_tuples") == after["dead"]
        and value("poel_jobs_table_autovacuums_total") == after["autovacuums"]
        and value("poel_jobs_table_size_bytes") == after["table_bytes"]
        and value("poel_jobs_index_size_bytes", index="jobs_ready_idx")
        == after["claim_index_bytes"]
        and ages_match
    )
    return after if same else None


@pytest.mark.process
def test_metrics_show_the_jobs_tables_live_and_dead_rows_and_last_vacuum(
    serve: Any, poel_queue: Any, poel_conn: Any, wait_sql: Any, wait_for: Any
) -> None:
    worker = serve(POEL_QUEUE_METRICS_INTERVAL_S=0.2)
    ids = [poel_queue.enqueue("test.record", {"key": str(i)}) for i in range(30)]
    wait_sql(
        "SELECT count(*) = 30 FROM poel.jobs WHERE id = ANY(%s) AND state = 'succeeded'", [ids]
    )
    # The server counts each job's updates as dead row versions. Its statistics arrive
    # late: a backend flushes its counts at most once a second, and an idle one after
    # 10 s (the enqueuer's inserts), hence the polling with a deadline.
    before = wait_for(
        lambda: (
            (stats := matching(worker, poel_conn))
            and stats["dead"] > 0
            and stats["live"] >= 30
            and stats
        ),
        timeout=30,
        what="/metrics to show the live rows and dead row versions the server counts",
    )
    if before["age"] is None:  # a new database, never vacuumed (autovacuum off here)
        found = scrape(worker)
        assert math.isnan(found["poel_jobs_table_last_vacuum_age_seconds", ()])

    poel_conn.execute("VACUUM poel.jobs")
    after = wait_for(
        lambda: (stats := matching(worker, poel_conn)) and stats["age"] is not None and stats,
        what="/metrics to show the vacuum the server counts",
    )
    assert after["dead"] < before["dead"]
    assert 0 <= after["age"] < 60
    assert worker.stop() == 0
