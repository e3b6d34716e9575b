"""(d) Bad input everywhere: 1,000 malformed enqueue attempts, each refused with a PoelError
(never a psycopg error or a bare TypeError) and nothing stored; 1,000 invalid payloads
stored behind the host's back (SQL), each failed at once with its reason while the worker
stays healthy."""

from __future__ import annotations

import datetime as dt
import random
import time

import psycopg
import pytest

from poel_host import JobRequest, Queue
from poel_host.errors import PoelError

pytestmark = pytest.mark.chaos

ATTEMPTS = 1000
LIMIT = 4096  # POEL_MAX_PAYLOAD_BYTES for the huge payloads


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def malformed(rng: random.Random) -> tuple[str, tuple, dict]:
    """One bad enqueue: (what is wrong, args, kwargs)."""
    kind = rng.randrange(12)
    key = "".join(rng.choice("abcxyz_") for _ in range(rng.randint(1, 8)))
    if kind == 0:  # not JSON
        text = rng.choice(
            [
                "{not json",
                "",
                " ",
                "{'single': 1}",
                "[1,",
                '{"a": }',
                "{,}",
                "NaN",
                "tru",
                '{"a": 1} trailing',
                "\x00",
                '{"a": "\\ud800"',
                "\ufeff{}x",
            ]
        )
        return "not JSON", ("test.record", text + key * rng.randint(0, 1)), {}
    if kind == 1:  # a JSON value that is not an object, or not JSON at all
        payload = rng.choice(
            [
                [1, 2],
                5,
                2.5,
                True,
                "[1]",
                "5",
                '"text"',
                "null",
                (1, 2),
                {1, 2},
                b"\xff\xfe",
                Opaque(),
                b"[]",
                "true",
            ]
        )
        return "not an object", ("test.record", payload), {}
    if kind == 2:  # wrong field types for the job's model
        job, payload = rng.choice(
            [
                ("test.record", {"key": rng.randint(-5, 5)}),
                ("test.record", {"key": [key]}),
                ("test.record", {"key": {"k": key}}),
                ("test.record", {"key": None}),
                ("test.flaky", {"key": key}),
                ("test.flaky", {"fail_times": -rng.randint(1, 9)}),
                ("test.flaky", {"fail_times": key}),
                ("test.flaky", {"fail_times": 1.5}),
                ("test.sleep", {"seconds": -1}),
                ("test.sleep", {"seconds": [key]}),
                ("test.misbehave", {"how": key}),
            ]
        )
        return "wrong types", (job, payload), {}
    if kind == 3:  # huge
        payload = rng.choice(
            [
                {"key": "x" * (LIMIT + rng.randint(0, 10_000))},
                {"key": "é" * (LIMIT // 2 + 1)},
                {f"k{i}": i for i in range(LIMIT // 4)},
                {"key": "k", "n": 10 ** rng.randint(4301, 6000)},
                '{"key": "k", "n": 1' + "0" * rng.randint(4301, 6000) + "}",
            ]
        )
        return "huge", ("test.record", payload), {}
    if kind == 4:  # deeply nested, as objects or as JSON text
        depth = rng.choice([65, 100, 1000, 5000])
        if rng.random() < 0.5:
            return "deep", ("test.record", {"key": "k", "deep": nested(depth)}), {}
        text = '{"key": "k", "deep": ' + "[" * depth * 20 + "]" * depth * 20 + "}"
        return "deep text", ("test.record", text), {}
    if kind == 5:  # NUL bytes
        where = rng.choice(
            [{"key": f"a\x00{key}"}, {f"k\x00{key}": "v"}, {"key": "k", "l": ["\x00"]}]
        )
        return "NUL", ("test.record", where), {}
    if kind == 6:  # lone surrogates and their JSON escapes
        bad = rng.choice(["\ud800", "\udfff", "x\udc80y"])
        where = rng.choice(
            [
                {"key": bad},
                {bad: 1},
                {"key": "k", "l": [bad]},
                '{"key": "\\ud800"}',
                '{"key": "\\udc00x"}',
            ]
        )
        return "surrogate", ("test.record", where), {}
    if kind == 7:  # non-finite numbers
        value = rng.choice([float("nan"), float("inf"), float("-inf")])
        where = rng.choice(
            [{"key": "k", "n": value}, '{"key": "k", "n": NaN}', '{"key": "k", "n": -Infinity}']
        )
        return "non-finite", ("test.record", where), {}
    if kind == 8:  # unknown job types
        job = rng.choice([f"no.such.{key}", "", "test.recorD", "test.record ", 123, None])
        return "unknown type", (job, {}), {}
    if kind == 9:  # unknown type allowed, but the name itself is invalid
        job = rng.choice(
            [
                "",
                " ",
                "a" * 201,
                f"a\x00{key}",
                f"x\ud800{key}",
                5,
                None,
                b"t",
                "with space",
                "new\nline",
                "ünï",
            ]
        )
        return "invalid type name", (job, {}), {"allow_unknown": True}
    if kind == 10:  # options of the wrong type or out of range
        option = rng.choice(
            [
                {"priority": "high"},
                {"priority": 2**40},
                {"priority": True},
                {"priority": 1.5},
                {"max_attempts": "3"},
                {"max_attempts": 0},
                {"max_attempts": 2**40},
                {"max_attempts": False},
                {"queue": 5},
                {"queue": "q" * 201},
                {"unique_key": "u" * 5000},
                {"queue": f"q\x00{key}"},
                {"queue": "q\ud800"},
                {"unique_key": 7},
                {"unique_key": f"u\x00{key}"},
                {"unique_key": "\udfff"},
                {"run_at": "tomorrow"},
                {"run_at": 1700000000},
                {"run_at": dt.date(2030, 1, 1)},
                {"delay": "soon"},
                {"delay": float("inf")},
                {"delay": float("nan")},
                {"delay": -1},
                {"delay": 1e300},
                {"delay": True},
                {"delay": dt.timedelta(days=-1)},
                {"delay": dt.timedelta.max},
            ]
        )
        return f"bad option {next(iter(option))}", ("test.record", {"key": key}), option
    # kind == 11: several faults at once through enqueue_many
    requests = [JobRequest("test.record", {"key": key}), JobRequest("test.record", [key])]
    rng.shuffle(requests)
    return "batch with one bad job", (requests,), {}


def test_1000_malformed_enqueues_are_refused_with_a_poel_error(
    poel_dsn, poel_plugins, poel_conn, figures
):
    rng = random.Random(1000)
    refused: dict[str, int] = {}
    started = time.monotonic()
    with Queue(poel_dsn, jobs=poel_plugins.jobs, max_payload_bytes=LIMIT) as queue:
        for _ in range(ATTEMPTS):
            what, args, kwargs = malformed(rng)
            call = queue.enqueue_many if what.startswith("batch") else queue.enqueue
            try:
                job_id = call(*args, **kwargs)
            except PoelError as exc:
                message = str(exc)
                assert message and "\n" not in message, (what, args, kwargs, message)
                assert len(message) < 2000, (what, message[:300])
                refused[f"{what}: {type(exc).__name__}"] = (
                    refused.get(f"{what}: {type(exc).__name__}", 0) + 1
                )
            except (psycopg.Error, Exception) as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{what} {args!r:.200} {kwargs!r:.200}: leaked {exc!r:.300}")
            else:
                pytest.fail(f"{what} {args!r:.200} {kwargs!r:.200} was accepted: {job_id}")
        # the queue's connection is still good for a valid job
        assert queue.enqueue("test.record", {"key": "valid"}) > 0
    assert poel_conn.execute("SELECT count(*) AS n FROM poel.jobs").fetchone()["n"] == 1
    figures.update(
        malformed_enqueues=ATTEMPTS,
        refused_by_kind=refused,
        seconds=round(time.monotonic() - started, 3),
    )


def stored(rng: random.Random) -> tuple[str, str, str]:
    """One invalid payload as SQL would store it: (job type, jsonb text, expected reason)."""
    kind = rng.randrange(10)
    key = "".join(rng.choice("abcxyz") for _ in range(rng.randint(1, 6)))
    if kind == 0:
        return (
            "test.flaky",
            f'{{"key": "{key}", "fail_times": -{rng.randint(1, 99)}}}',
            ("fail_times: Input should be greater than or equal to 0"),
        )
    if kind == 1:
        return "test.flaky", f'{{"fail_times": "{key}"}}', "fail_times: Input should be a valid"
    if kind == 2:
        return "test.flaky", "{}", "fail_times: Field required"
    if kind == 3:
        return (
            "test.sleep",
            f'{{"seconds": {rng.choice(["-1", "null", "[1]", "{}"])}}}',
            ("seconds:"),
        )
    if kind == 4:
        value = rng.choice(["5", "[1]", '{"a": 1}', "null", "true", "1.5"])
        return "test.record", f'{{"key": {value}}}', "key: Input should be a valid string"
    if kind == 5:
        return "test.misbehave", f'{{"how": "{key}"}}', "how: Input should be"
    if kind == 6:  # nested deeper than Python's JSON parser goes
        depth = rng.choice([2000, 5000])
        return "test.record", '{"key": "k", "d": ' + "[" * depth + "]" * depth + "}", "nested"
    if kind == 7:  # a number with more digits than Python converts
        digits = rng.randint(4301, 8000)
        return "test.record", f'{{"key": "k", "n": 1{"0" * digits}}}', "not valid JSON"
    if kind == 8:
        return "test.flaky", f'{{"key": "{key}", "fail_times": 1.5}}', "fail_times:"
    return "test.sleep", '{"seconds": 1, "key": 7}', "key: Input should be a valid string"


def test_1000_invalid_stored_payloads_fail_at_once_and_the_worker_stays_healthy(
    serve, poel_conn, poel_queue, wait_sql, figures
):
    rng = random.Random(2000)
    expected: dict[int, str] = {}
    with poel_conn.transaction():
        for _ in range(ATTEMPTS):
            job_type, payload, reason = stored(rng)
            row = poel_conn.execute(
                "INSERT INTO poel.jobs (job_type, payload) VALUES (%s, %s::jsonb) RETURNING id",
                [job_type, payload],
            ).fetchone()
            expected[row["id"]] = reason
    started = time.monotonic()
    worker = serve(WORKER_CONCURRENCY=20)
    wait_sql("SELECT count(*) = %s FROM poel.jobs WHERE state = 'failed'", [ATTEMPTS], timeout=60)
    failed_s = time.monotonic() - started
    rows = poel_conn.execute(
        "SELECT id, state::text AS state, attempts, last_error, errors FROM poel.jobs"
    ).fetchall()
    assert len(rows) == ATTEMPTS
    for row in rows:
        assert (row["state"], row["attempts"], len(row["errors"])) == ("failed", 1, 1), row
        assert expected[row["id"]] in row["last_error"], (expected[row["id"]], row["last_error"])
        assert len(row["last_error"]) < 2000
    assert poel_conn.execute("SELECT count(*) AS n FROM poel_test_runs").fetchone()["n"] == 0

    assert worker.http("/health").status == 200
    good = poel_queue.enqueue("test.record", {"key": "after"})
    wait_sql("SELECT state = 'succeeded' FROM poel.jobs WHERE id = %s", [good])
    assert worker.proc.poll() is None
    assert worker.stop() == 0
    figures.update(
        invalid_stored_payloads=ATTEMPTS,
        all_failed_with_reason_s=round(failed_s, 3),
        reasons={r: list(expected.values()).count(r) for r in sorted(set(expected.values()))},
    )
