"""cleanup_auth_tokens against a real database, through the worker (``run_job``).

Only the fixtures poel-host ships for plugin authors are used, as an outside plugin would.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from poel_auth_cleanup.plugin import Cleanup, cleanup


def add_tokens(conn: Any, count: int, *, expires_in: dt.timedelta, prefix: str) -> None:
    """``count`` tokens expiring ``expires_in`` from now (negative: already expired)."""
    conn.execute(
        "INSERT INTO auth_tokens (user_id, token_hash, expires_at)"
        " SELECT 'user-' || g, %s || g, now() + %s FROM generate_series(1, %s) AS g",
        [prefix, expires_in, count],
    )


def remaining(conn: Any, table: str = "auth_tokens") -> list[str]:
    rows = conn.execute(f"SELECT token_hash FROM {table} ORDER BY token_hash").fetchall()
    return [row["token_hash"] for row in rows]


def summary(result: Any) -> dict[str, Any]:
    [entry] = [e for e in result.logs if e["event"] == "expired auth tokens removed"]
    return dict(entry)


def test_the_migration_creates_the_tokens_table(poel_conn: Any) -> None:
    applied = poel_conn.execute(
        "SELECT version, name FROM poel.migrations WHERE plugin = 'poel-auth-cleanup'"
    ).fetchall()
    assert applied == [{"version": 1, "name": "auth_tokens_table"}]
    index = poel_conn.execute("SELECT to_regclass('public.auth_tokens_expires_at_idx') AS i")
    assert index.fetchone()["i"] == "auth_tokens_expires_at_idx"


def test_removes_only_expired_tokens(run_job: Any, poel_conn: Any) -> None:
    add_tokens(poel_conn, 3, expires_in=dt.timedelta(hours=-1), prefix="old-")
    add_tokens(poel_conn, 2, expires_in=dt.timedelta(hours=1), prefix="live-")

    result = run_job("cleanup_auth_tokens", {})

    assert result.state == "succeeded"
    assert remaining(poel_conn) == ["live-1", "live-2"]
    assert (summary(result)["rows"], summary(result)["batches"]) == (3, 1)


def test_a_backlog_larger_than_a_batch_goes_in_several_batches(
    run_job: Any, poel_conn: Any
) -> None:
    add_tokens(poel_conn, 25, expires_in=dt.timedelta(minutes=-5), prefix="old-")
    add_tokens(poel_conn, 4, expires_in=dt.timedelta(minutes=5), prefix="live-")

    result = run_job("cleanup_auth_tokens", {"batch_size": 10})

    assert result.state == "succeeded"
    assert remaining(poel_conn) == ["live-1", "live-2", "live-3", "live-4"]
    batches = [e["rows"] for e in result.logs if e["event"] == "auth token batch deleted"]
    assert batches == [10, 10, 5]
    assert summary(result)["rows"] == 25


def test_an_exact_multiple_of_the_batch_size_ends_with_an_empty_batch(
    run_job: Any, poel_conn: Any
) -> None:
    add_tokens(poel_conn, 20, expires_in=dt.timedelta(minutes=-5), prefix="old-")

    result = run_job("cleanup_auth_tokens", {"batch_size": 10})

    batches = [e["rows"] for e in result.logs if e["event"] == "auth token batch deleted"]
    assert batches == [10, 10, 0]
    assert remaining(poel_conn) == []


@pytest.mark.parametrize("older_than", [7200, "PT2H"])
def test_older_than_keeps_recently_expired_tokens(
    run_job: Any, poel_conn: Any, older_than: Any
) -> None:
    add_tokens(poel_conn, 2, expires_in=dt.timedelta(hours=-3), prefix="ancient-")
    add_tokens(poel_conn, 2, expires_in=dt.timedelta(hours=-1), prefix="recent-")

    result = run_job("cleanup_auth_tokens", {"older_than": older_than})

    assert result.state == "succeeded"
    assert remaining(poel_conn) == ["recent-1", "recent-2"]


def test_the_batch_size_setting(
    run_job: Any, poel_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POEL_AUTH_CLEANUP_BATCH_SIZE", "2")
    add_tokens(poel_conn, 5, expires_in=dt.timedelta(minutes=-1), prefix="old-")

    result = run_job("cleanup_auth_tokens")

    assert (summary(result)["batch_size"], summary(result)["batches"]) == (2, 3)
    assert remaining(poel_conn) == []


def test_a_configured_table_and_expiry_column(
    run_job: Any, poel_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    poel_conn.execute("CREATE SCHEMA auth_app")
    poel_conn.execute(
        'CREATE TABLE auth_app."Sessions" (token_hash text, "validUntil" timestamptz)'
    )
    poel_conn.execute(
        """INSERT INTO auth_app."Sessions" VALUES ('gone', now() - interval '1 day'),"""
        """ ('kept', now() + interval '1 day')"""
    )
    add_tokens(poel_conn, 1, expires_in=dt.timedelta(days=-1), prefix="default-table-")
    monkeypatch.setenv("POEL_AUTH_TOKENS_TABLE", "auth_app.Sessions")
    monkeypatch.setenv("POEL_AUTH_TOKENS_EXPIRY_COLUMN", "validUntil")

    result = run_job("cleanup_auth_tokens", {})

    assert result.state == "succeeded"
    assert remaining(poel_conn, 'auth_app."Sessions"') == ["kept"]
    assert remaining(poel_conn) == ["default-table-1"]


@pytest.mark.parametrize(
    "payload", [{"batch_size": 0}, {"older_than": -1}, {"older_than": "soon"}, {"typo": 1}]
)
def test_an_invalid_override_is_refused_at_enqueue(poel_queue: Any, payload: Any) -> None:
    from poel_host import InvalidPayload

    with pytest.raises(InvalidPayload):
        poel_queue.enqueue("cleanup_auth_tokens", payload)


def test_it_is_scheduled_hourly(poel_plugins: Any) -> None:
    assert poel_plugins.jobs["cleanup_auth_tokens"].schedule == "0 * * * *"


def test_a_cancelled_cleanup_stops_before_the_next_batch(poel_context: Any, poel_conn: Any) -> None:
    from poel_host import JobCancelled

    add_tokens(poel_conn, 3, expires_in=dt.timedelta(minutes=-1), prefix="old-")
    poel_context.cancel()

    with pytest.raises(JobCancelled):
        cleanup(Cleanup(batch_size=1), poel_context)

    assert len(remaining(poel_conn)) == 3
