"""The per-key claim (claim_steered's keyed walk, migration 0026): each key's limit and
rate window, keys at their limit passed over, and claims of a per-key type racing on
their own connections."""

from __future__ import annotations

import datetime as dt

import pytest
import steering_kit as kit

from poel_host.database import connection


def _claim(conn, limit: int = kit.LIMIT) -> list[str]:
    """The keys of the jobs one claim takes."""
    return sorted(kit.keys(conn, kit.steered(conn, ["test.noop"], limit)[0]))


def test_a_claim_passes_over_keys_at_their_limit_to_the_keys_after_them(poel_conn):
    # Keys a..o, two jobs each, one at a time per key: claims of 5 serve a..e, f..j and
    # k..o, and the cursor stops after o. Once k..o finish, the next claim wraps round to
    # a..e, which are at their limit, and f..j too: it must pass over them to k..o, not
    # stop at the first five keys it reads (it once did, and took nothing).
    names = "abcdefghijklmno"
    for key in names:
        kit.jobs(poel_conn, 2, key=key)
    kit.steer(poel_conn, "type", "test.noop", concurrency=1, per_key=True)
    assert [_claim(poel_conn, 5) for _ in range(3)] == [
        list(names[0:5]),
        list(names[5:10]),
        list(names[10:15]),
    ]
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'succeeded', finished_at = now()"
        " WHERE state = 'running' AND key > 'j'"
    )
    assert _claim(poel_conn, 5) == list(names[10:15])
    assert _claim(poel_conn, 5) == []
    for key in names:
        assert kit.running(poel_conn, f"key = '{key}'") == 1


def test_a_heavy_job_takes_its_weight_of_its_keys_limit(poel_conn):
    # Jobs without a key are one more key (looked for at the head of the claim order).
    kit.jobs(poel_conn, 10)
    for key in ("a", "b"):
        kit.jobs(poel_conn, 10, key=key)
    kit.steer(poel_conn, "type", "test.noop", concurrency=5, weight=2, per_key=True)
    taken = kit.steered(poel_conn, ["test.noop"])[0]
    assert len(taken) == 6  # 4 of 5 slots each; a third would be 6
    assert kit.running(poel_conn, "key = 'a'") == kit.running(poel_conn, "key IS NULL") == 2
    assert kit.steered(poel_conn, ["test.noop"])[0] == []


def test_each_keys_rate_window_holds_and_says_when_it_opens(poel_conn):
    for key in ("a", "b"):
        kit.jobs(poel_conn, 10, key=key)
    kit.steer(poel_conn, "type", "test.noop", rate=3, per_ms=60_000, per_key=True)
    assert _claim(poel_conn) == ["a"] * 3 + ["b"] * 3
    kit.jobs(poel_conn, 5, key="c")
    assert _claim(poel_conn) == ["c"] * 3
    taken, reopens = kit.steered(poel_conn, ["test.noop"])
    assert taken == []
    # Every key's window is full: the earliest opens a minute after its first start.
    first = poel_conn.execute("SELECT min(started_at) AS t FROM poel.jobs").fetchone()["t"]
    assert reopens == [first + dt.timedelta(minutes=1)]
    log = poel_conn.execute("SELECT gate, n FROM poel.steering_starts ORDER BY gate").fetchall()
    assert [(r["gate"], r["n"]) for r in log] == [
        ("key:test.noop:a", 3),
        ("key:test.noop:b", 3),
        ("key:test.noop:c", 3),
    ]


def test_a_second_claim_of_the_type_waits_for_the_first_to_commit(poel_conn, poel_dsn):
    # Two claims of a per-key type at once: the second must not count the keys' running
    # jobs before the first's are committed (it would start a second job of a key).
    for key in ("a", "b", "c"):
        kit.jobs(poel_conn, 10, key=key)
    kit.steer(poel_conn, "type", "test.noop", concurrency=2, per_key=True)
    with connection(poel_dsn) as first:
        first.autocommit = False
        assert len(kit.steered(first, ["test.noop"])[0]) == 6
        assert kit.steered(poel_conn, ["test.noop"])[0] == []
        first.commit()
    assert kit.steered(poel_conn, ["test.noop"])[0] == []
    for key in ("a", "b", "c"):
        assert kit.running(poel_conn, f"key = '{key}'") == 2


@pytest.mark.parametrize("keys", [3, 40])
def test_a_claim_fills_itself_from_few_keys_and_serves_many_in_turn(poel_conn, keys):
    # Few keys: each key's share of the whole claim (not of a claim of ten keys), so one
    # claim takes all it asks for, in even shares. Many: a tenth of the claim from each
    # of ten keys.
    for k in range(keys):
        kit.jobs(poel_conn, 30, key=f"k{k:02d}")
    kit.steer(poel_conn, "type", "test.noop", concurrency=20, per_key=True)
    taken = kit.keys(poel_conn, kit.steered(poel_conn, ["test.noop"])[0])
    assert len(taken) == kit.LIMIT
    assert max(taken.count(k) for k in set(taken)) == (17 if keys == 3 else 5)


def test_a_claim_reads_at_most_a_thousand_keys_and_the_next_goes_on_from_there(poel_conn):
    # 1,100 keys, one at a time each: a claim reads 1,000 keys at most and asks to be
    # followed at once (a reopening now); the next starts where it stopped.
    poel_conn.execute(
        "INSERT INTO poel.jobs (job_type, key)"
        " SELECT 'test.noop', 'k' || lpad(g::text, 4, '0')"
        " FROM generate_series(1, 1100) AS g, generate_series(1, 2)"
    )
    kit.steer(poel_conn, "type", "test.noop", concurrency=1, per_key=True)
    now = poel_conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
    taken, reopens = kit.steered(poel_conn, ["test.noop"], limit=2000)
    assert len(taken) == 1000 and len(reopens) == 1 and reopens[0] - now < dt.timedelta(seconds=5)
    assert len(kit.steered(poel_conn, ["test.noop"], limit=2000)[0]) == 100
    # Every key at its limit: a claim reads 1,000 of them (k0001 to k1000), takes
    # nothing, and does not ask to be followed at once (it would walk them in a loop).
    assert kit.steered(poel_conn, ["test.noop"]) == ([], [])
    # Its cursor moved past them all the same: once k1001 to k1100 have room, the next
    # claim reaches them, not the same thousand keys again.
    poel_conn.execute(
        "UPDATE poel.jobs SET state = 'succeeded', finished_at = now()"
        " WHERE state = 'running' AND key > 'k1000'"
    )
    assert len(kit.steered(poel_conn, ["test.noop"], limit=2000)[0]) == 100
    assert kit.running(poel_conn) == 1100
