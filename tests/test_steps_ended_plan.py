"""steps_ended (migrations 0023, 0028) works in time linear in the steps a statement ends:
an outcome statement that ends a thousand steps of a hundred fan-ins reads each of their
edges about once, with PL/pgSQL's custom plans (its first five calls) and its generic plan
(after them), among 44,000 other steps of which 22,000 finished and not yet archived, on
statistics taken before they finished (a queue's statistics are always stale). 0023's
version compared every waiting step with every edge and, on its generic plan, every
finished job with the whole batch: 171 ms a statement of 750 steps while 10,000 workflows
drained (benchmarks/workflows.py), which made the completer's next batch larger still.
Checked by the rows each plan node handled (auto_explain's, sent to this session as
notices), not by a clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

FLOWS, FAN_OUT = 100, 10
OTHERS, OTHERS_FINISHED = 4_000, 2_000  # other workflows; those whose parallel steps ended
STEPS = [{"step": f"p{i}", "job_type": "any.job"} for i in range(FAN_OUT)]
STEPS.append({"step": "join", "job_type": "any.job", "after": [s["step"] for s in STEPS]})


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def rows_handled(plan: dict[str, Any]) -> int:
    """Rows every node of the plan returned or threw away, over all its loops."""
    total = 0
    for n in nodes(plan):
        loops = n.get("Actual Loops", 1)
        kept = n.get("Actual Rows", 0)
        removed = n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Join Filter", 0)
        total += (kept + removed) * loops
    return total


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_ending_a_thousand_steps_reads_each_edge_about_once(poel_conn, plan_cache_mode):
    conn = poel_conn
    enqueue = "SELECT count(poel.enqueue_workflow(%s, %s::jsonb)) FROM generate_series(1, %s)"
    conn.execute(enqueue, ["other", json.dumps(STEPS), OTHERS])
    conn.execute("ANALYZE poel.jobs, poel.job_dependencies, poel.workflows")
    conn.execute(
        "UPDATE poel.jobs SET state = 'succeeded', finished_at = now()"
        " WHERE step <> 'join' AND workflow_id <= %s",
        [OTHERS_FINISHED],
    )
    conn.execute(enqueue, ["fan", json.dumps(STEPS), FLOWS])
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT j.id FROM poel.jobs AS j JOIN poel.workflows AS w ON w.id = j.workflow_id"
            " WHERE w.name = 'fan' AND j.step <> 'join'"
        )
    ]
    assert len(ids) == FLOWS * FAN_OUT
    plans: list[dict[str, Any]] = []

    def heard(diag: Any) -> None:
        message = diag.message_primary or ""
        if "plan:" in message:
            plans.append(json.loads(message.split("plan:", 1)[1])["Plan"])

    conn.add_notice_handler(heard)
    with conn.transaction():
        conn.execute("LOAD 'auto_explain'")
        for name, value in [
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_nested_statements", "on"),
            ("auto_explain.log_format", "json"),
            ("auto_explain.log_level", "notice"),
            ("plan_cache_mode", plan_cache_mode),
        ]:
            conn.execute("SELECT set_config(%s, %s, true)", [name, value])
        conn.execute(
            "UPDATE poel.jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
            [ids],
        )
        conn.execute("SELECT poel.steps_ended(%s)", [ids])
        conn.execute("SET LOCAL auto_explain.log_min_duration = -1")
    # every fan-in released, none twice
    joins = conn.execute(
        "SELECT count(*) FILTER (WHERE ready AND waiting_on = 0 AND state = 'queued') AS due,"
        " count(*) AS n FROM poel.jobs WHERE step = 'join' AND workflow_id > %s",
        [OTHERS],
    ).fetchone()
    assert joins == {"due": FLOWS, "n": FLOWS}
    left = conn.execute(
        "SELECT array_agg(DISTINCT steps_left) AS s FROM poel.workflows WHERE name = 'fan'"
    ).fetchone()
    assert left == {"s": [1]}
    # steps_ended's statements: the steps' edges are FLOWS * FAN_OUT; each statement
    # handles a small multiple of them, not their square (0023's: 100,000 and more)
    nested = [p for p in plans if rows_handled(p) > 0]
    assert nested, "auto_explain sent no plan"
    worst = max(rows_handled(p) for p in nested)
    assert worst < 20 * len(ids), json.dumps(max(nested, key=rows_handled), indent=1)[:4000]
