"""Enqueueing: from Python (one, many, inside the caller's transaction) and from SQL, with
payloads validated before they are stored, unique keys among live jobs, and NOTIFY."""

from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest
from pydantic import BaseModel, Field

from poel_host import Job, JobRequest, Queue
from poel_host.errors import (
    DatabaseUnavailable,
    DuplicateJob,
    InvalidPayload,
    PoelError,
    UnknownJobType,
)
from poel_host.worker.listener import NOTIFY_CHANNEL


class Mail(BaseModel):
    to: str
    retries: int = Field(default=0, ge=0)


def send(payload, ctx):
    pass


MAIL = Job(type="mail.send", schema=Mail, handler=send, queue="mail", max_attempts=5, priority=4)


@pytest.fixture
def queue(poel_dsn):
    with Queue(poel_dsn, jobs={"mail.send": MAIL}) as q:
        yield q


def row(conn, job_id):
    return conn.execute("SELECT * FROM poel.jobs WHERE id = %s", [job_id]).fetchone()


def count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"]


def test_enqueue_stores_a_row_with_the_jobs_defaults(queue, poel_conn):
    job_id = queue.enqueue("mail.send", {"to": "a@example.com"})
    assert isinstance(job_id, int)
    r = row(poel_conn, job_id)
    assert r["job_type"] == "mail.send"
    assert r["payload"] == {"to": "a@example.com"}  # what the producer sent, not the dump
    assert r["state"] == "queued"
    assert (r["queue"], r["max_attempts"], r["priority"]) == ("mail", 5, 4)
    assert r["attempts"] == 0
    assert r["errors"] == []
    assert r["last_error"] is None and r["unique_key"] is None
    assert r["run_at"] <= r["created_at"] + dt.timedelta(milliseconds=1)


def test_enqueue_options_are_honoured(queue, poel_conn):
    run_at = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    r = row(
        poel_conn,
        queue.enqueue(
            "mail.send", {"to": "b"}, run_at=run_at, priority=-2, queue="bulk", max_attempts=1
        ),
    )
    assert r["run_at"] == run_at
    assert (r["priority"], r["queue"], r["max_attempts"]) == (-2, "bulk", 1)


def test_enqueue_delay(queue, poel_conn):
    for delay in (90, 90.0, dt.timedelta(seconds=90)):
        r = row(poel_conn, queue.enqueue("mail.send", {"to": "c"}, delay=delay))
        assert r["run_at"] - r["created_at"] == dt.timedelta(seconds=90)


def test_enqueue_accepts_a_model_or_json_text(queue, poel_conn):
    a = queue.enqueue("mail.send", Mail(to="m"))
    b = queue.enqueue("mail.send", '{"to": "t"}')
    assert row(poel_conn, a)["payload"] == {"to": "m", "retries": 0}
    assert row(poel_conn, b)["payload"] == {"to": "t"}


def test_invalid_payload_is_refused_with_pydantics_message(queue, poel_conn):
    with pytest.raises(InvalidPayload) as info:
        queue.enqueue("mail.send", {"retries": -1})
    message = str(info.value)
    assert message.startswith("invalid payload for 'mail.send': ")
    assert "to: Field required" in message
    assert "retries: Input should be greater than or equal to 0" in message
    assert info.value.job_type == "mail.send"
    assert count(poel_conn) == 0


def test_unknown_type_is_refused_unless_allowed(queue, poel_dsn, poel_conn):
    with pytest.raises(UnknownJobType, match=r"no installed plugin handles job type 'other\.job'"):
        queue.enqueue("other.job", {"anything": 1})
    assert count(poel_conn) == 0
    job_id = queue.enqueue("other.job", {"anything": 1}, allow_unknown=True)
    assert row(poel_conn, job_id)["queue"] == "default"
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as producer:
        other = producer.enqueue("other.job", {"x": [1, 2]})
    r = row(poel_conn, other)
    assert (r["payload"], r["max_attempts"], r["priority"]) == ({"x": [1, 2]}, 3, 0)


def test_default_queue_validates_with_installed_plugins(poel_dsn, poel_conn):
    with Queue(poel_dsn) as q:
        with pytest.raises(InvalidPayload, match="record_id"):
            q.enqueue("process_new_record", {"record_id": "not a number"})
        assert q.enqueue("process_new_record", {"record_id": 1}) > 0


@pytest.mark.parametrize("bad", [0, -1])
def test_max_attempts_must_be_positive(bad):
    q = Queue(NO_SERVER, jobs={"mail.send": MAIL})
    with pytest.raises(InvalidPayload, match="max_attempts must be at least 1"):
        q.enqueue("mail.send", {"to": "x"}, max_attempts=bad)


@pytest.mark.parametrize("delay", [-1, dt.timedelta(seconds=-5)])
def test_negative_delay_is_refused(delay):
    q = Queue(NO_SERVER, jobs={"mail.send": MAIL})
    with pytest.raises(PoelError, match="delay must not be negative"):
        q.enqueue("mail.send", {"to": "x"}, delay=delay)


def test_unreachable_database_is_one_clear_error():
    q = Queue(NO_SERVER, jobs={"mail.send": MAIL})
    with pytest.raises(DatabaseUnavailable) as info:
        q.enqueue("mail.send", {"to": "x"})
    assert "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/none" in str(info.value)


def test_duplicate_unique_key_among_live_jobs(queue, poel_conn):
    first = queue.enqueue("mail.send", {"to": "x"}, unique_key="welcome:42")
    with pytest.raises(DuplicateJob) as info:
        queue.enqueue("mail.send", {"to": "x"}, unique_key="welcome:42")
    assert info.value.existing_id == first
    assert f"(job {first})" in str(info.value)
    assert "welcome:42" in str(info.value)
    assert count(poel_conn) == 1
    # another key, or the same key for another type, is fine
    queue.enqueue("mail.send", {"to": "x"}, unique_key="welcome:43")
    queue.enqueue("other.job", {}, unique_key="welcome:42", allow_unknown=True)
    # still live while running
    poel_conn.execute("UPDATE poel.jobs SET state = 'running' WHERE id = %s", [first])
    with pytest.raises(DuplicateJob):
        queue.enqueue("mail.send", {"to": "x"}, unique_key="welcome:42")
    # not live any more once finished
    poel_conn.execute("UPDATE poel.jobs SET state = 'succeeded' WHERE id = %s", [first])
    again = queue.enqueue("mail.send", {"to": "x"}, unique_key="welcome:42")
    assert again != first


def test_enqueue_many_in_one_go(queue, poel_conn):
    ids = queue.enqueue_many(
        [
            JobRequest("mail.send", {"to": "a"}),
            JobRequest("mail.send", {"to": "b"}, priority=9, queue="vip"),
            JobRequest("mail.send", {"to": "c"}, delay=60),
        ]
    )
    assert len(ids) == 3 and all(isinstance(i, int) for i in ids)
    rows = [row(poel_conn, i) for i in ids]
    assert [r["payload"]["to"] for r in rows] == ["a", "b", "c"]
    assert (rows[1]["priority"], rows[1]["queue"]) == (9, "vip")
    assert rows[2]["run_at"] - rows[2]["created_at"] == dt.timedelta(seconds=60)
    # one statement: one transaction, one created_at
    assert len({r["created_at"] for r in rows}) == 1
    assert queue.enqueue_many([]) == []


def test_enqueue_many_returns_none_for_skipped_duplicates(queue, poel_conn):
    existing = queue.enqueue("mail.send", {"to": "a"}, unique_key="k1")
    ids = queue.enqueue_many(
        [
            JobRequest("mail.send", {"to": "a"}, unique_key="k1"),
            JobRequest("mail.send", {"to": "b"}, unique_key="k2"),
            JobRequest("mail.send", {"to": "c"}),
            JobRequest("mail.send", {"to": "b again"}, unique_key="k2"),
            JobRequest("mail.send", {"to": "d"}, unique_key="k3"),
        ]
    )
    assert ids[0] is None and ids[3] is None
    assert all(isinstance(i, int) for i in (ids[1], ids[2], ids[4]))
    assert existing not in ids
    assert row(poel_conn, ids[1])["payload"] == {"to": "b"}
    assert row(poel_conn, ids[4])["unique_key"] == "k3"
    assert count(poel_conn) == 4


def test_enqueue_many_stores_nothing_if_one_payload_is_invalid(queue, poel_conn):
    with pytest.raises(InvalidPayload, match="to: Field required"):
        queue.enqueue_many(
            [JobRequest("mail.send", {"to": "a"}), JobRequest("mail.send", {"too": "b"})]
        )
    with pytest.raises(UnknownJobType):
        queue.enqueue_many([JobRequest("mail.send", {"to": "a"}), JobRequest("nope", {})])
    assert count(poel_conn) == 0


def test_enqueue_inside_the_callers_transaction(queue, poel_dsn, poel_conn):
    with psycopg.connect(poel_dsn) as conn:  # not autocommit: a transaction is open
        job_id = queue.enqueue("mail.send", {"to": "rolled back"}, connection=conn)
        many = queue.enqueue_many([JobRequest("mail.send", {"to": "x"})], connection=conn)
        assert row(poel_conn, job_id) is None  # invisible until committed
        conn.rollback()
        assert row(poel_conn, job_id) is None
        assert row(poel_conn, many[0]) is None

        job_id = queue.enqueue("mail.send", {"to": "committed"}, connection=conn)
        conn.execute("SELECT 1")  # the caller's own work in the same transaction
        assert row(poel_conn, job_id) is None
        conn.commit()
        assert row(poel_conn, job_id)["payload"] == {"to": "committed"}
    assert count(poel_conn) == 1


def test_duplicate_inside_the_callers_transaction(queue, poel_dsn):
    with psycopg.connect(poel_dsn) as conn:
        first = queue.enqueue("mail.send", {"to": "a"}, unique_key="k", connection=conn)
        with pytest.raises(DuplicateJob) as info:
            queue.enqueue("mail.send", {"to": "a"}, unique_key="k", connection=conn)
        assert info.value.existing_id == first
        conn.rollback()


def test_sql_function_enqueue(poel_conn):
    job_id = poel_conn.execute(
        "SELECT poel.enqueue('mail.send', '{\"to\": \"sql\"}') AS id"
    ).fetchone()["id"]
    r = row(poel_conn, job_id)
    assert (r["state"], r["queue"], r["max_attempts"], r["priority"]) == (
        "queued",
        "default",
        3,
        0,
    )
    assert r["payload"] == {"to": "sql"}

    named = poel_conn.execute(
        "SELECT poel.enqueue('mail.send', jsonb_build_object('to', 'n'), queue => 'mail',"
        " priority => 7, max_attempts => 2, run_at => now() + interval '1 hour',"
        " unique_key => 'sql-key') AS id"
    ).fetchone()["id"]
    r = row(poel_conn, named)
    assert (r["queue"], r["priority"], r["max_attempts"], r["unique_key"]) == (
        "mail",
        7,
        2,
        "sql-key",
    )
    assert r["run_at"] - r["created_at"] == dt.timedelta(hours=1)

    duplicate = poel_conn.execute(
        "SELECT poel.enqueue('mail.send', unique_key => 'sql-key') AS id"
    ).fetchone()["id"]
    assert duplicate is None
    assert count(poel_conn) == 2


def test_sql_insert_and_function_in_a_rolled_back_transaction(poel_dsn, poel_conn):
    with psycopg.connect(poel_dsn) as conn:
        conn.execute("INSERT INTO poel.jobs (job_type, payload) VALUES ('mail.send', '{}')")
        conn.execute("SELECT poel.enqueue('mail.send')")
        conn.rollback()
    assert count(poel_conn) == 0
    poel_conn.execute("INSERT INTO poel.jobs (job_type) VALUES ('mail.send')")
    assert count(poel_conn) == 1


def test_sql_refuses_a_non_object_payload(poel_conn):
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_payload_is_object"):
        poel_conn.execute("SELECT poel.enqueue('mail.send', '[1, 2]')")


def test_one_notify_per_statement(queue, poel_dsn, poel_conn):
    with psycopg.connect(poel_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        listener.execute("LISTEN poel_test_sentinel")
        ids = queue.enqueue_many([JobRequest("mail.send", {"to": str(i)}) for i in range(100)])
        assert len(ids) == 100
        queue.enqueue("mail.send", {"to": "one more"})
        # Notifications arrive in commit order: once the sentinel sent after both inserts
        # has arrived, every notification of the inserts has too.
        poel_conn.execute("NOTIFY poel_test_sentinel")
        seen = []
        deadline = time.monotonic() + 10
        for note in listener.notifies(timeout=10):
            seen.append((note.channel, note.payload))
            if note.channel == "poel_test_sentinel" or time.monotonic() > deadline:
                break
    assert seen == [(NOTIFY_CHANNEL, "poel"), (NOTIFY_CHANNEL, "poel"), ("poel_test_sentinel", "")]


# Payload edge cases ---------------------------------------------------------------------


NO_SERVER = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("[1, 2]", "must be a JSON object, got list"),
        ([1, 2], "must be a JSON object, got list"),
        ("3", "must be a JSON object, got int"),
        ('"text"', "must be a JSON object, got str"),
        ("null", "must be a JSON object, got NoneType"),
        ("{not json", "is not valid JSON"),
        ({"k": "nul \x00 byte"}, "contains a NUL character"),
        ({"nul\x00key": 1}, "contains a NUL character"),
        ({"k": ["\ud800"]}, "lone surrogate"),
        ({"k": float("nan")}, "which JSON cannot hold"),
        ('{"k": NaN}', "which JSON cannot hold"),
        ({"k": float("inf")}, "which JSON cannot hold"),
        ({1: "int key"}, "non-string key"),
        ({"k": object()}, "not JSON-serialisable"),
        (nested(100), "nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested deeper than 64 levels"),
        ('{"a":' * 65 + "1" + "}" * 65, "nested deeper than 64 levels"),
        (b"\xff\xfe", "is not valid JSON"),
    ],
)
def test_payload_edge_cases(payload, expected):
    # Refused before the database is touched: this Queue's server does not exist, so
    # reaching it would raise DatabaseUnavailable instead.
    with Queue(NO_SERVER, jobs={}, allow_unknown=True) as q:
        with pytest.raises(InvalidPayload) as info:
            q.enqueue("any.job", payload)
        with pytest.raises(InvalidPayload):
            q.enqueue_many([JobRequest("any.job", {}), JobRequest("any.job", payload)])
    assert expected in str(info.value)
    assert "'any.job'" in str(info.value)
    assert "\n" not in str(info.value)


def test_payload_size_limit(poel_dsn, poel_conn):
    with Queue(poel_dsn, jobs={}, allow_unknown=True, max_payload_bytes=100) as q:
        q.enqueue("any.job", {"k": "x" * 80})
        with pytest.raises(InvalidPayload) as info:
            q.enqueue("any.job", {"k": "é" * 60})  # 2 bytes each in UTF-8
    message = str(info.value)
    assert "over the limit of 100 (POEL_MAX_PAYLOAD_BYTES)" in message
    assert "bytes" in message
    assert count(poel_conn) == 1


def test_moderate_nesting_and_unicode_are_stored(poel_dsn, poel_conn):
    payload = {"deep": nested(30), "text": "zoë ✓ 日本", "n": [1, 2.5, None, True]}
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as q:
        job_id = q.enqueue("any.job", payload)
    assert row(poel_conn, job_id)["payload"] == payload


def test_none_payload_is_an_empty_object(poel_dsn, poel_conn):
    with Queue(poel_dsn, jobs={}, allow_unknown=True) as q:
        job_id = q.enqueue("any.job")
    assert row(poel_conn, job_id)["payload"] == {}
