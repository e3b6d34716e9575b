"""``poel-host workflows list|show`` (issue 20): the newest workflows with their state,
and one workflow's steps (waiting ones called so), as a table or JSON."""

from __future__ import annotations

import json
import uuid

import pytest

from poel_host import Queue, Workflow

T = "wf.cli"


@pytest.fixture
def queue(poel_dsn):
    made = Queue(poel_dsn, jobs={}, allow_unknown=True)
    yield made
    made.close()


def test_workflows_list_and_show(queue, poel_dsn, poel_cli):
    flow = Workflow("ingest")
    first = flow.step("record", T)
    flow.step("merge", T, after=first)
    running = queue.enqueue_workflow(flow)
    failing = Workflow("failing")
    bad = failing.step("bad", T)
    failing.step("after_bad", T, after=bad)
    failed = queue.enqueue_workflow(failing)
    token = str(uuid.uuid4())
    bad_id = queue.workflow(failed).step("bad").job_id
    queue._store.claim_jobs(
        job_types=[T], queues=None, limit=1, owner="t", token=token, lease_ms=60_000
    )  # the oldest: record
    record_id = queue.workflow(running).step("record").job_id
    queue._store.finish([(record_id, token, "succeeded", None, 0, None, None, None, None)])
    token = str(uuid.uuid4())
    queue._store.claim_jobs(
        job_types=[T], queues=None, limit=1, owner="t", token=token, lease_ms=60_000
    )
    queue._store.finish(
        [(bad_id, token, "failed", "it broke\non two lines", 0, None, None, None, None)]
    )

    listed = poel_cli("workflows", "list", DATABASE_URL=poel_dsn)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "STEPS", "LEFT", "CREATED", "FAILED", "STEP"]
    assert lines[1].split()[:4] == [str(failed), "failing", "failed", "0/2"]
    assert lines[1].split()[-1] == "bad"
    assert lines[2].split()[:4] == [str(running), "ingest", "running", "1/2"]
    only = json.loads(
        poel_cli("workflows", "list", "--state", "failed", "--json", DATABASE_URL=poel_dsn).stdout
    )
    assert [w["id"] for w in only] == [failed]

    shown = poel_cli("workflows", "show", str(failed), DATABASE_URL=poel_dsn).stdout
    assert shown.splitlines()[0] == (
        f"workflow {failed} 'failing': failed (step bad failed: it broke on two lines)"
    )
    assert "after_bad" in shown and "cancelled" in shown
    as_json = json.loads(
        poel_cli("workflows", "show", str(running), "--json", DATABASE_URL=poel_dsn).stdout
    )
    assert [(s["name"], s["state"], s["after"]) for s in as_json["steps"]] == [
        ("record", "succeeded", []),
        ("merge", "queued", ["record"]),
    ]
    missing = poel_cli("workflows", "show", "999", DATABASE_URL=poel_dsn)
    assert missing.returncode == 1 and "no workflow with id 999" in missing.stderr


def test_workflows_cancel_and_retry(queue, poel_dsn, poel_cli):
    """What an operator reads: what changed, what is still stopping, why a retry is
    refused; an unknown id exits 1, a second cancel exits 0 saying nothing changed."""
    flow = Workflow("ingest")
    first = flow.step("record", T)
    flow.step("merge", T, after=first)
    workflow_id = queue.enqueue_workflow(flow)
    token = str(uuid.uuid4())
    queue._store.claim_jobs(
        job_types=[T], queues=None, limit=1, owner="t", token=token, lease_ms=60_000
    )
    record_id = queue.workflow(workflow_id).step("record").job_id

    refused = poel_cli("workflows", "retry", str(workflow_id), DATABASE_URL=poel_dsn)
    assert refused.returncode == 1
    assert f"workflow {workflow_id} is running (2 of its 2 steps not ended)" in refused.stderr

    cancelled = poel_cli("workflows", "cancel", str(workflow_id), DATABASE_URL=poel_dsn)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == (
        f"workflow {workflow_id} 'ingest' cancelled: 1 step cancelled; 1 running step asked "
        f"to stop (each ends cancelled within about a second; see poel-host workflows show "
        f"{workflow_id})"
    )
    shown = poel_cli("workflows", "show", str(workflow_id), DATABASE_URL=poel_dsn).stdout
    assert shown.splitlines()[0] == (
        f"workflow {workflow_id} 'ingest': cancelled, 1 running step being stopped"
    )
    stopping = poel_cli("workflows", "retry", str(workflow_id), DATABASE_URL=poel_dsn)
    assert stopping.returncode == 1
    assert "1 of its steps have not ended yet" in stopping.stderr

    queue._store.finish([(record_id, token, "cancelled", "stopped", 0, None, None, None, None)])
    again = poel_cli("workflows", "cancel", str(workflow_id), DATABASE_URL=poel_dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"workflow {workflow_id} 'ingest' was cancelled already: nothing changed"
    )
    retried = poel_cli("workflows", "retry", str(workflow_id), DATABASE_URL=poel_dsn)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == (
        f"workflow {workflow_id} 'ingest' running again: 2 steps queued again (record, merge); "
        "1 due now, 1 waiting for the steps they depend on"
    )
    for action in ("cancel", "retry"):
        missing = poel_cli("workflows", action, "999", DATABASE_URL=poel_dsn)
        assert missing.returncode == 1 and "workflow 999 does not exist" in missing.stderr
