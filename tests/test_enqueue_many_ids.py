"""``Queue.enqueue_many`` returns, for each request in order, the id of the job stored for
it, or ``None`` where a live job holds its ``unique_key`` (one enqueued before, or an
earlier request of the same batch). Checked row by row against what was stored."""

from __future__ import annotations

import random

from poel_host import JobRequest


def test_enqueue_many_maps_each_id_to_its_request(poel_queue, poel_conn):
    # Live jobs holding some keys already; a finished one no longer holds its key.
    holders = {
        key: poel_queue.enqueue("test.record", {"key": f"holder-{key}"}, unique_key=key)
        for key in ("live-1", "live-2", "live-3")
    }
    finished = poel_queue.enqueue("test.record", {"key": "finished"}, unique_key="done-1")
    poel_conn.execute("UPDATE poel.jobs SET state = 'succeeded' WHERE id = %s", [finished])

    # A shuffled mix: new jobs without a key, new keys, keys held by live jobs, keys
    # repeated within the batch, one key under two job types (keys are per type), and the
    # key of a finished job. Every payload names its request.
    rng = random.Random(9)
    kinds = (
        [("test.record", None)] * 40
        + [("test.record", f"new-{i}") for i in range(30)]
        + [("test.record", f"live-{1 + i % 3}") for i in range(15)]
        + [("test.record", f"twice-{i % 10}") for i in range(25)]
        + [("test.noop", "new-1"), ("test.noop", "live-1"), ("test.noop", "live-1")]
        + [("test.record", "done-1")]
    )
    rng.shuffle(kinds)
    requests = [
        JobRequest(job_type, {"key": f"request-{i}"}, unique_key=key)
        for i, (job_type, key) in enumerate(kinds)
    ]

    ids = poel_queue.enqueue_many(requests)

    assert len(ids) == len(requests)
    # What each request should have got: skipped when a live job (from before, or from an
    # earlier request of this batch) holds its (type, key).
    held = {("test.record", key) for key in holders}
    expected_new = []
    for request in requests:
        if request.unique_key is None:
            expected_new.append(True)
            continue
        slot = (request.type, request.unique_key)
        expected_new.append(slot not in held)
        held.add(slot)
    assert [job_id is not None for job_id in ids] == expected_new

    stored = {
        row["id"]: row
        for row in poel_conn.execute(
            "SELECT id, job_type, payload, unique_key, state::text AS state FROM poel.jobs"
            " WHERE id <> ALL(%s)",
            [[*holders.values(), finished]],
        ).fetchall()
    }
    assert len(stored) == sum(expected_new)  # nothing stored beyond the ids returned
    assert len(set(job_id for job_id in ids if job_id is not None)) == len(stored)
    for i, (request, job_id) in enumerate(zip(requests, ids, strict=True)):
        if job_id is None:
            continue
        row = stored[job_id]
        assert (row["job_type"], row["unique_key"], row["payload"], row["state"]) == (
            request.type,
            request.unique_key,
            {"key": f"request-{i}"},
            "queued",
        ), f"request {i} was given the id of another request's job"
