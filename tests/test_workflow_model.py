"""Workflows against a model (issue 20): random DAGs with random outcomes and run_anyway
steps, their steps claimed and ended through the worker's own statements in random
batches, end exactly as a plain simulation says: every step ran at most once and only
after all its dependencies ended, a step is cancelled exactly when one of its
dependencies did not succeed and it does not run anyway, and the workflow fails exactly
when a step failed, naming one that did."""

from __future__ import annotations

import itertools
import random
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poel_host import Workflow

_types = itertools.count()


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=9))
    steps = []
    for i in range(n):
        after = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        steps.append(
            {
                "after": sorted(after),
                "run_anyway": draw(st.booleans()) if after else False,
                "fails": draw(st.integers(0, 3)) == 0,
            }
        )
    return steps, draw(st.integers(0, 2**32 - 1))


def expected(steps):
    final = []
    for step in steps:
        blocked = any(final[d] != "succeeded" for d in step["after"])
        if blocked and not step["run_anyway"]:
            final.append("cancelled")
        else:
            final.append("failed" if step["fails"] else "succeeded")
    return final


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=dags())
def test_random_workflows_end_as_the_model_says(poel_queue, case):
    steps, seed = case
    rng = random.Random(seed)
    job_type = f"wf.model{next(_types)}"
    flow = Workflow("model")
    made = []
    for i, step in enumerate(steps):
        made.append(
            flow.step(
                f"s{i}",
                job_type,
                after=[made[d] for d in step["after"]],
                run_anyway=step["run_anyway"],
                max_attempts=1,
            )
        )
    workflow_id = poel_queue.enqueue_workflow(flow, allow_unknown=True)
    store = poel_queue._store
    ran: list[int] = []
    ended: set[int] = set()
    while True:
        token = str(uuid.uuid4())
        rows = store.claim_jobs(
            job_types=[job_type], queues=None, limit=100, owner="m", token=token, lease_ms=60_000
        )
        if not rows:
            break
        state = poel_queue.workflow(workflow_id)
        assert state is not None
        by_id = {s.job_id: int(s.name[1:]) for s in state.steps}
        claimed = [by_id[r["id"]] for r in rows]
        for i in claimed:
            assert i not in ran, f"s{i} ran twice"
            assert all(d in ended for d in steps[i]["after"]), f"s{i} ran before its dependencies"
        ran += claimed
        rng.shuffle(rows)
        cut = rng.randint(0, len(rows))
        for batch in (rows[:cut], rows[cut:]):
            outcomes = [
                (
                    r["id"],
                    token,
                    "failed" if steps[by_id[r["id"]]]["fails"] else "succeeded",
                    "broken" if steps[by_id[r["id"]]]["fails"] else None,
                    0.0,
                    None,
                    None,
                    None,
                    None,
                )
                for r in batch
            ]
            if outcomes:
                store.finish(outcomes)
        state = poel_queue.workflow(workflow_id)
        assert state is not None
        ended = {int(s.name[1:]) for s in state.steps if s.state not in ("waiting", "queued")}
    state = poel_queue.workflow(workflow_id)
    assert state is not None
    want = expected(steps)
    assert [s.state for s in state.steps] == want
    assert sorted(ran) == [i for i, w in enumerate(want) if w != "cancelled"]
    assert state.finished_at is not None
    if "failed" in want:
        assert state.state == "failed"
        assert state.failed_step in {f"s{i}" for i, w in enumerate(want) if w == "failed"}
    else:
        assert (state.state, state.failed_step) == ("succeeded", None)
