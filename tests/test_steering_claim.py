"""The steered claim (claim_steered, migration 0020) as the database enforces it: limits,
weights, per-key limits, rate windows and fair shares, for claims racing on their own
connections. The serve-level races are in test_serve_steering.py."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from poel_host.database import connection
from poel_host.store import claim_query

LIMIT = 50


def _jobs(
    conn: Any,
    n: int,
    job_type: str = "test.noop",
    *,
    key: str | None = None,
    queue: str = "default",
    priority: int = 0,
) -> None:
    conn.execute(
        "INSERT INTO poel.jobs (job_type, queue, priority, key)"
        " SELECT %s, %s, %s, %s FROM generate_series(1, %s)",
        [job_type, queue, priority, key, n],
    )


def _steer(conn: Any, kind: str, name: str, **columns: Any) -> None:
    names = ["kind", "name", *columns]
    conn.execute(
        f"INSERT INTO poel.steering ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
        [kind, name, *columns.values()],
    )


def _steered(conn: Any, job_types: list[str], limit: int = LIMIT) -> tuple[list[Any], Any]:
    rows = conn.execute(
        "SELECT * FROM poel.claim_steered(%s, NULL, %s, 'w', %s, NULL)",
        [job_types, limit, str(uuid.uuid4())],
    ).fetchall()
    return [r for r in rows if r["id"] is not None], [
        r["reopens_at"] for r in rows if r["id"] is None
    ]


def _plain(conn: Any, job_types: list[str]) -> list[Any]:
    params = {
        "job_types": job_types,
        "queues": None,
        "limit": LIMIT,
        "owner": "w",
        "token": str(uuid.uuid4()),
        "lease_ms": None,
    }
    return conn.execute(claim_query("poel", len(job_types)), params).fetchall()


def _keys(conn: Any, rows: list[Any]) -> list[str]:
    return [
        conn.execute("SELECT key FROM poel.jobs WHERE id = %s", [r["id"]]).fetchone()["key"]
        for r in rows
    ]


def _running(conn: Any, where: str = "true") -> int:
    return conn.execute(
        f"SELECT count(*) AS n FROM poel.jobs WHERE state = 'running' AND {where}"
    ).fetchone()["n"]


def _finish(conn: Any, n: int | None = None) -> None:
    conn.execute(
        "UPDATE poel.jobs SET state = 'succeeded', finished_at = now() WHERE id IN"
        " (SELECT id FROM poel.jobs WHERE state = 'running' ORDER BY id LIMIT %s)",
        [n],
    )


def test_the_plain_claim_leaves_steered_types_and_queues_alone(poel_conn):
    _jobs(poel_conn, 10, "test.noop")
    _jobs(poel_conn, 10, "test.record", queue="bulk")
    _jobs(poel_conn, 5, "test.record")
    _steer(poel_conn, "type", "test.noop", concurrency=3)
    _steer(poel_conn, "queue", "bulk", concurrency=4)
    taken = _plain(poel_conn, ["test.noop", "test.record"])
    assert {(r["job_type"], r["queue"]) for r in taken} == {("test.record", "default")}
    assert len(taken) == 5
    steered, _ = _steered(poel_conn, ["test.noop", "test.record"])
    assert sorted((r["job_type"], r["queue"]) for r in steered) == sorted(
        [("test.noop", "default")] * 3 + [("test.record", "bulk")] * 4
    )


def test_a_limit_holds_and_frees_as_jobs_finish(poel_conn):
    _jobs(poel_conn, 20)
    _steer(poel_conn, "type", "test.noop", concurrency=3)
    assert len(_steered(poel_conn, ["test.noop"])[0]) == 3
    assert _steered(poel_conn, ["test.noop"])[0] == []
    _finish(poel_conn, 2)
    assert len(_steered(poel_conn, ["test.noop"])[0]) == 2
    assert _running(poel_conn) == 3


def test_a_heavy_job_takes_its_weight_of_the_limit(poel_conn):
    _jobs(poel_conn, 10)
    _steer(poel_conn, "type", "test.noop", concurrency=8, weight=3)
    assert len(_steered(poel_conn, ["test.noop"])[0]) == 2  # 6 of 8; a third would be 9
    assert (
        poel_conn.execute(
            "SELECT sum(slots) AS s FROM poel.jobs WHERE state = 'running'"
        ).fetchone()["s"]
        == 6
    )


def test_a_per_key_limit_holds_for_each_key_apart(poel_conn):
    for key in ("a", "b", "c"):
        _jobs(poel_conn, 10, key=key)
    _steer(poel_conn, "type", "test.noop", concurrency=2, per_key=True)
    taken, _ = _steered(poel_conn, ["test.noop"])
    assert len(taken) == 6
    for key in ("a", "b", "c"):
        assert _running(poel_conn, f"key = '{key}'") == 2
    assert _steered(poel_conn, ["test.noop"])[0] == []


def test_a_queue_limit_counts_every_type_in_it(poel_conn):
    _jobs(poel_conn, 10, "test.noop", queue="media")
    _jobs(poel_conn, 10, "test.record", queue="media")
    _steer(poel_conn, "queue", "media", concurrency=5)
    assert len(_steered(poel_conn, ["test.noop", "test.record"])[0]) == 5
    assert _steered(poel_conn, ["test.noop", "test.record"])[0] == []


def test_a_rate_window_admits_its_rate_and_says_when_it_opens(poel_conn):
    _jobs(poel_conn, 10)
    _steer(poel_conn, "type", "test.noop", rate=3, per_ms=60_000)
    taken, reopens = _steered(poel_conn, ["test.noop"])
    assert len(taken) == 3
    assert len(reopens) == 1  # now: it took fewer than asked, so the worker looks again
    again, reopens_again = _steered(poel_conn, ["test.noop"])
    assert again == []
    # The window is full: it opens a minute after its first start, not before.
    [opens] = reopens_again
    first = poel_conn.execute("SELECT min(started_at) AS t FROM poel.jobs").fetchone()["t"]
    assert opens == first + dt.timedelta(minutes=1)
    # The window's log keeps no more than the window: the claim's 3 starts, as one row.
    log = poel_conn.execute("SELECT count(*) AS rows, sum(n) AS n FROM poel.steering_starts")
    assert log.fetchone() == {"rows": 1, "n": 3}


def test_a_claim_skips_a_gate_another_claim_holds(poel_conn, poel_dsn):
    _jobs(poel_conn, 10)
    _steer(poel_conn, "type", "test.noop", concurrency=4)
    with connection(poel_dsn) as first:
        first.autocommit = False
        assert len(_steered(first, ["test.noop"])[0]) == 4
        # The first claim has not committed: a second must not count around it.
        assert _steered(poel_conn, ["test.noop"])[0] == []
        first.commit()
    assert _steered(poel_conn, ["test.noop"])[0] == []
    assert _running(poel_conn) == 4


@pytest.mark.parametrize("fair", [True, False])
def test_fair_shares_give_a_small_key_its_turn_at_once(poel_conn, fair):
    _jobs(poel_conn, 5_000, key="big")
    _jobs(poel_conn, 10, key="small")
    _steer(poel_conn, "type", "test.noop", fair=fair)
    taken, _ = _steered(poel_conn, ["test.noop"], limit=20)
    keys = _keys(poel_conn, taken)
    if fair:
        assert keys.count("small") == 10 and keys.count("big") == 10
    else:
        assert keys.count("small") == 0


def test_weighted_fair_shares(poel_conn):
    _jobs(poel_conn, 100, key="gold")
    _jobs(poel_conn, 100, key="free")
    _steer(poel_conn, "type", "test.noop", fair=True, key_weights='{"gold": 3}')
    taken, _ = _steered(poel_conn, ["test.noop"], limit=40)
    keys = _keys(poel_conn, taken)
    assert keys.count("gold") == 30 and keys.count("free") == 10


def test_many_keys_are_served_in_turn_across_claims(poel_conn):
    # 200 keys of one job each, claims of 50: each claim serves the keys after the last
    # one the claim before it served, so five claims serve every key once, and the key
    # with a backlog takes no more than its turn (a share of a claim of 10 keys).
    for k in range(200):
        _jobs(poel_conn, 1, key=f"k{k:03d}")
    _jobs(poel_conn, 500, key="k000")  # one key with a backlog, first in key order
    _steer(poel_conn, "type", "test.noop", fair=True)
    claims = [_keys(poel_conn, _steered(poel_conn, ["test.noop"])[0]) for _ in range(5)]
    assert {f"k{k:03d}" for k in range(200)} <= {key for keys in claims for key in keys}
    assert claims[0].count("k000") == 50 // 10


@pytest.mark.parametrize("options", [{"fair": True}, {"concurrency": 5, "per_key": True}])
def test_a_keyed_type_with_nothing_queued_claims_nothing(poel_conn, options):
    # The idle worker's claim: no key to serve (a division by the number of keys once).
    _steer(poel_conn, "type", "test.noop", **options)
    assert _steered(poel_conn, ["test.noop"]) == ([], [])
    _jobs(poel_conn, 3)  # jobs without a key only
    assert len(_steered(poel_conn, ["test.noop"])[0]) == 3


def test_two_fair_claims_at_once_take_different_jobs(poel_conn, poel_dsn):
    # No gate serialises a fair type's claims: the second must take the next rows, not
    # collide with the first's and come back short.
    for key in ("a", "b"):
        _jobs(poel_conn, 100, key=key)
    _steer(poel_conn, "type", "test.noop", fair=True)
    with connection(poel_dsn) as first:
        first.autocommit = False
        one, _ = _steered(first, ["test.noop"], limit=20)
        two, _ = _steered(poel_conn, ["test.noop"], limit=20)
        first.commit()
    assert len(one) == 20 and len(two) == 20
    assert not {r["id"] for r in one} & {r["id"] for r in two}
