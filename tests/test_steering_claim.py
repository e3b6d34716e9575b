"""The steered claim (claim_steered, migration 0020) as the database enforces it: limits,
weights, per-key limits, rate windows and fair shares, for claims racing on their own
connections. The serve-level races are in test_serve_steering.py."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import steering_kit as kit

from poel_host.database import connection
from poel_host.store import Store


def test_the_plain_claim_leaves_steered_types_and_queues_alone(poel_conn):
    kit.jobs(poel_conn, 10, "test.noop")
    kit.jobs(poel_conn, 10, "test.record", queue="bulk")
    kit.jobs(poel_conn, 5, "test.record")
    kit.steer(poel_conn, "type", "test.noop", concurrency=3)
    kit.steer(poel_conn, "queue", "bulk", concurrency=4)
    taken = kit.plain(poel_conn, ["test.noop", "test.record"])
    assert {(r["job_type"], r["queue"]) for r in taken} == {("test.record", "default")}
    assert len(taken) == 5
    steered, _ = kit.steered(poel_conn, ["test.noop", "test.record"])
    assert sorted((r["job_type"], r["queue"]) for r in steered) == sorted(
        [("test.noop", "default")] * 3 + [("test.record", "bulk")] * 4
    )


def test_a_limit_holds_and_frees_as_jobs_finish(poel_conn):
    kit.jobs(poel_conn, 20)
    kit.steer(poel_conn, "type", "test.noop", concurrency=3)
    assert len(kit.steered(poel_conn, ["test.noop"])[0]) == 3
    assert kit.steered(poel_conn, ["test.noop"])[0] == []
    kit.finish(poel_conn, 2)
    assert len(kit.steered(poel_conn, ["test.noop"])[0]) == 2
    assert kit.running(poel_conn) == 3


def test_a_heavy_job_takes_its_weight_of_the_limit(poel_conn):
    kit.jobs(poel_conn, 10)
    kit.steer(poel_conn, "type", "test.noop", concurrency=8, weight=3)
    assert len(kit.steered(poel_conn, ["test.noop"])[0]) == 2  # 6 of 8; a third would be 9
    assert (
        poel_conn.execute(
            "SELECT sum(slots) AS s FROM poel.jobs WHERE state = 'running'"
        ).fetchone()["s"]
        == 6
    )


def test_a_per_key_limit_holds_for_each_key_apart(poel_conn):
    for key in ("a", "b", "c"):
        kit.jobs(poel_conn, 10, key=key)
    kit.steer(poel_conn, "type", "test.noop", concurrency=2, per_key=True)
    taken, _ = kit.steered(poel_conn, ["test.noop"])
    assert len(taken) == 6
    for key in ("a", "b", "c"):
        assert kit.running(poel_conn, f"key = '{key}'") == 2
    assert kit.steered(poel_conn, ["test.noop"])[0] == []


def test_a_queue_limit_counts_every_type_in_it(poel_conn):
    kit.jobs(poel_conn, 10, "test.noop", queue="media")
    kit.jobs(poel_conn, 10, "test.record", queue="media")
    kit.steer(poel_conn, "queue", "media", concurrency=5)
    assert len(kit.steered(poel_conn, ["test.noop", "test.record"])[0]) == 5
    assert kit.steered(poel_conn, ["test.noop", "test.record"])[0] == []


def test_a_rate_window_admits_its_rate_and_says_when_it_opens(poel_conn):
    kit.jobs(poel_conn, 10)
    kit.steer(poel_conn, "type", "test.noop", rate=3, per_ms=60_000)
    taken, reopens = kit.steered(poel_conn, ["test.noop"])
    assert len(taken) == 3
    assert len(reopens) == 1  # now: it took fewer than asked, so the worker looks again
    again, reopens_again = kit.steered(poel_conn, ["test.noop"])
    assert again == []
    # The window is full: it opens a minute after its first start, not before.
    [opens] = reopens_again
    first = poel_conn.execute("SELECT min(started_at) AS t FROM poel.jobs").fetchone()["t"]
    assert opens == first + dt.timedelta(minutes=1)
    # The window's log keeps no more than the window: the claim's 3 starts, as one row.
    log = poel_conn.execute("SELECT count(*) AS rows, sum(n) AS n FROM poel.steering_starts")
    assert log.fetchone() == {"rows": 1, "n": 3}


def test_a_claim_skips_a_gate_another_claim_holds(poel_conn, poel_dsn):
    kit.jobs(poel_conn, 10)
    kit.steer(poel_conn, "type", "test.noop", concurrency=4)
    with connection(poel_dsn) as first:
        first.autocommit = False
        assert len(kit.steered(first, ["test.noop"])[0]) == 4
        # The first claim has not committed: a second must not count around it.
        assert kit.steered(poel_conn, ["test.noop"])[0] == []
        first.commit()
    assert kit.steered(poel_conn, ["test.noop"])[0] == []
    assert kit.running(poel_conn) == 4


@pytest.mark.parametrize("fair", [True, False])
def test_fair_shares_give_a_small_key_its_turn_at_once(poel_conn, fair):
    kit.jobs(poel_conn, 5_000, key="big")
    kit.jobs(poel_conn, 10, key="small")
    kit.steer(poel_conn, "type", "test.noop", fair=fair)
    taken, _ = kit.steered(poel_conn, ["test.noop"], limit=20)
    keys = kit.keys(poel_conn, taken)
    if fair:
        assert keys.count("small") == 10 and keys.count("big") == 10
    else:
        assert keys.count("small") == 0


def test_weighted_fair_shares(poel_conn):
    kit.jobs(poel_conn, 100, key="gold")
    kit.jobs(poel_conn, 100, key="free")
    kit.steer(poel_conn, "type", "test.noop", fair=True, key_weights='{"gold": 3}')
    taken, _ = kit.steered(poel_conn, ["test.noop"], limit=40)
    keys = kit.keys(poel_conn, taken)
    assert keys.count("gold") == 30 and keys.count("free") == 10


def test_many_keys_are_served_in_turn_across_claims(poel_conn):
    # 200 keys of one job each, claims of 50: each claim serves the keys after the last
    # one the claim before it served, so five claims serve every key once, and the key
    # with a backlog takes no more than its turn (a share of a claim of 10 keys).
    for k in range(200):
        kit.jobs(poel_conn, 1, key=f"k{k:03d}")
    kit.jobs(poel_conn, 500, key="k000")  # one key with a backlog, first in key order
    kit.steer(poel_conn, "type", "test.noop", fair=True)
    claims = [kit.keys(poel_conn, kit.steered(poel_conn, ["test.noop"])[0]) for _ in range(5)]
    assert {f"k{k:03d}" for k in range(200)} <= {key for keys in claims for key in keys}
    assert claims[0].count("k000") == 50 // 10


@pytest.mark.parametrize("options", [{"fair": True}, {"concurrency": 5, "per_key": True}])
def test_a_keyed_type_with_nothing_queued_claims_nothing(poel_conn, options):
    # The idle worker's claim: no key to serve (a division by the number of keys once).
    kit.steer(poel_conn, "type", "test.noop", **options)
    assert kit.steered(poel_conn, ["test.noop"]) == ([], [])
    kit.jobs(poel_conn, 3)  # jobs without a key only
    assert len(kit.steered(poel_conn, ["test.noop"])[0]) == 3


def test_two_fair_claims_at_once_take_different_jobs(poel_conn, poel_dsn):
    # No gate serialises a fair type's claims: the second must take the next rows, not
    # collide with the first's and come back short.
    for key in ("a", "b"):
        kit.jobs(poel_conn, 100, key=key)
    kit.steer(poel_conn, "type", "test.noop", fair=True)
    with connection(poel_dsn) as first:
        first.autocommit = False
        one, _ = kit.steered(first, ["test.noop"], limit=20)
        two, _ = kit.steered(poel_conn, ["test.noop"], limit=20)
        first.commit()
    assert len(one) == 20 and len(two) == 20
    assert not {r["id"] for r in one} & {r["id"] for r in two}


class _On:
    """A store's source that is one connection (the test's)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def run(self, work: Any) -> Any:
        return work(self.conn)


def _end(store: Store, conn: Any, ending: str, attempts: list[tuple[int, str]]) -> None:
    """End running attempts as a worker does: an outcome, a snooze, a hand-back, a rescue."""
    if ending == "finish":
        store.finish(
            [(i, token, "succeeded", None, 0, None, None, None, None) for i, token in attempts]
        )
    elif ending == "snooze":
        store.finish(
            [(i, token, "snoozed", None, 0, None, None, None, None) for i, token in attempts]
        )
    elif ending == "release":
        store.release_jobs(attempts, started=False, max_handbacks=3)
    else:
        conn.execute(
            "UPDATE poel.jobs SET lease_expires_at = now() - interval '1 second'"
            " WHERE id = ANY(%s)",
            [[i for i, _ in attempts]],
        )
        store.recover_expired(base_ms=1000, max_ms=1000, connection=conn)


@pytest.mark.parametrize("ending", ["finish", "snooze", "release", "rescue"])
def test_a_steered_jobs_end_wakes_the_idle_workers_and_no_other_end_does(
    poel_conn, poel_dsn, ending
):
    # The end of a steered attempt frees its slots: the statement that ends it sends the
    # NOTIFY that wakes the idle workers. The end of a plain one sends none (its cost was
    # a row trigger's test on every update of a job's state, before migration 0022).
    kit.jobs(poel_conn, 1, "test.noop")
    kit.jobs(poel_conn, 1, "test.plain")
    kit.steer(poel_conn, "type", "test.noop", concurrency=1)
    steered_token, plain_token = str(uuid.uuid4()), str(uuid.uuid4())
    [steered] = poel_conn.execute(
        "SELECT id FROM poel.claim_steered(%s, NULL, 1, 'w', %s, NULL) WHERE id IS NOT NULL",
        [["test.noop"], steered_token],
    ).fetchall()
    [plain] = poel_conn.execute(
        "UPDATE poel.jobs SET state = 'running', attempts = 1, lease_token = %s, lease_owner = 'w'"
        " WHERE job_type = 'test.plain' RETURNING id",
        [plain_token],
    ).fetchall()
    store = Store("poel", _On(poel_conn))
    with connection(poel_dsn, autocommit=True) as listener:
        listener.execute("LISTEN poel_jobs")
        _end(store, poel_conn, ending, [(plain["id"], plain_token)])
        _end(store, poel_conn, ending, [(steered["id"], steered_token)])
        poel_conn.execute("NOTIFY poel_jobs, 'marker'")  # delivered in commit order
        heard = [n.payload for n in listener.notifies(timeout=10, stop_after=2)]
    assert heard == ["poel", "marker"]
