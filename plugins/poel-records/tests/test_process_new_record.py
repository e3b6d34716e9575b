"""process_new_record against a real database, through the worker (``run_job``).

Only the fixtures poel-host ships for plugin authors are used, as an outside plugin would.
"""

from __future__ import annotations

from typing import Any

import pytest
from poel_records.plugin import NewRecord, process


def insert_record(conn: Any, record_id: int, **columns: Any) -> None:
    from psycopg.types.json import Jsonb

    conn.execute(
        "INSERT INTO records (id, record_type, metadata) VALUES (%s, %s, %s)",
        [record_id, columns.get("record_type"), Jsonb(columns.get("metadata", {}))],
    )


def get_record(conn: Any, record_id: int, table: str = "records") -> dict[str, Any]:
    row = conn.execute(f"SELECT * FROM {table} WHERE id = %s", [record_id]).fetchone()
    assert row is not None
    return dict(row)


def test_the_migration_creates_the_records_table(poel_conn: Any) -> None:
    applied = poel_conn.execute(
        "SELECT version, name FROM poel.migrations WHERE plugin = 'poel-records'"
    ).fetchall()
    assert applied == [{"version": 1, "name": "records_table"}]
    columns = poel_conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'records' ORDER BY ordinal_position"
    ).fetchall()
    assert [c["column_name"] for c in columns] == [
        "id",
        "record_type",
        "metadata",
        "processed_at",
        "created_at",
        "updated_at",
    ]


def test_merges_metadata_and_sets_type(run_job: Any, poel_conn: Any) -> None:
    insert_record(poel_conn, 7, metadata={"source": "upload", "pages": 1})

    result = run_job(
        "process_new_record",
        {"record_id": 7, "record_type": "invoice", "metadata": {"pages": 3, "lang": "nl"}},
    )

    assert result.state == "succeeded"
    row = get_record(poel_conn, 7)
    assert row["metadata"] == {"source": "upload", "pages": 3, "lang": "nl"}
    assert row["record_type"] == "invoice"
    assert row["processed_at"] is not None
    assert "record processed" in [entry["event"] for entry in result.logs]


def test_keeps_the_type_when_the_payload_has_none(run_job: Any, poel_conn: Any) -> None:
    insert_record(poel_conn, 8, record_type="receipt", metadata={"a": 1})

    result = run_job("process_new_record", {"record_id": 8})

    assert result.state == "succeeded"
    row = get_record(poel_conn, 8)
    assert (row["record_type"], row["metadata"]) == ("receipt", {"a": 1})
    assert row["processed_at"] is not None


def test_the_same_job_twice_leaves_the_same_row(run_job: Any, poel_conn: Any) -> None:
    insert_record(poel_conn, 9, metadata={"a": 1})
    payload = {"record_id": 9, "record_type": "photo", "metadata": {"b": 2}}

    first = run_job("process_new_record", payload)
    after_first = get_record(poel_conn, 9)
    second = run_job("process_new_record", payload)
    after_second = get_record(poel_conn, 9)

    assert (first.state, second.state) == ("succeeded", "succeeded")
    assert after_second == after_first  # processed_at and updated_at included
    assert after_second["metadata"] == {"a": 1, "b": 2}
    assert "record already up to date" in [entry["event"] for entry in second.logs]


def test_a_new_payload_for_a_processed_record_is_applied(run_job: Any, poel_conn: Any) -> None:
    insert_record(poel_conn, 10, metadata={"a": 1})
    run_job("process_new_record", {"record_id": 10, "metadata": {"b": 2}})
    first = get_record(poel_conn, 10)

    run_job("process_new_record", {"record_id": 10, "metadata": {"b": 3}})

    second = get_record(poel_conn, 10)
    assert second["metadata"] == {"a": 1, "b": 3}
    assert second["processed_at"] >= first["processed_at"]


def test_a_missing_record_is_retried_then_fails_naming_it(run_job: Any) -> None:
    first = run_job("process_new_record", {"record_id": 4242}, max_attempts=2)

    assert (first.state, first.row["attempts"]) == ("queued", 1)
    assert "record 4242 not found" in (first.error or "")
    assert "retrying" in (first.error or "")

    last = run_job.retry(first.id)

    assert (last.state, last.row["attempts"]) == ("failed", 2)
    assert last.error == (
        "RecordNotFound: record 4242 does not exist in records "
        "(looked for it on each of 2 attempts); giving up"
    )
    assert [e["attempt"] for e in last.row["errors"]] == [1, 2]


def test_a_record_committed_after_the_first_attempt_is_processed(
    run_job: Any, poel_conn: Any
) -> None:
    first = run_job("process_new_record", {"record_id": 11, "metadata": {"k": "v"}})
    assert first.state == "queued"

    insert_record(poel_conn, 11)
    second = run_job.retry(first.id)

    assert (second.state, second.row["attempts"]) == ("succeeded", 2)
    assert get_record(poel_conn, 11)["metadata"] == {"k": "v"}


@pytest.mark.parametrize("payload", [{"record_id": 0}, {"record_id": "x"}, {}])
def test_an_invalid_payload_is_refused_at_enqueue(poel_queue: Any, payload: Any) -> None:
    from poel_host import InvalidPayload

    with pytest.raises(InvalidPayload, match="record_id"):
        poel_queue.enqueue("process_new_record", payload)


def test_a_configured_schema_qualified_table(
    run_job: Any, poel_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    poel_conn.execute("CREATE SCHEMA app")
    poel_conn.execute(
        'CREATE TABLE app."Documents" (id bigint PRIMARY KEY, record_type text,'
        " metadata jsonb NOT NULL DEFAULT '{}', processed_at timestamptz,"
        " updated_at timestamptz)"
    )
    poel_conn.execute("""INSERT INTO app."Documents" (id) VALUES (5)""")
    monkeypatch.setenv("POEL_RECORDS_TABLE", "app.Documents")

    result = run_job("process_new_record", {"record_id": 5, "metadata": {"x": 1}})

    assert result.state == "succeeded"
    assert get_record(poel_conn, 5, 'app."Documents"')["metadata"] == {"x": 1}
    assert poel_conn.execute("SELECT count(*) AS n FROM records").fetchone() == {"n": 0}


def test_a_missing_configured_table_names_it(run_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POEL_RECORDS_TABLE", "nowhere.records")

    result = run_job("process_new_record", {"record_id": 1}, max_attempts=1)

    assert result.state == "failed"
    assert 'relation "nowhere.records" does not exist' in (result.error or "")


def test_the_handler_called_directly_with_a_context(poel_context: Any, poel_conn: Any) -> None:
    insert_record(poel_conn, 12)

    process(NewRecord(record_id=12, record_type="note"), poel_context)

    assert get_record(poel_conn, 12)["record_type"] == "note"
    assert poel_context.events == ["record processed"]
    assert poel_context.logs[0]["record_id"] == 12


def test_the_last_attempt_message_from_the_handler(poel_context: Any) -> None:
    from poel_records.plugin import RecordNotFound

    last = poel_context.replace(attempt=3, max_attempts=3)

    with pytest.raises(RecordNotFound, match=r"record 13 does not exist .* giving up"):
        process(NewRecord(record_id=13), last)
