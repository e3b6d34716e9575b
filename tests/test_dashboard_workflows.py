"""The dashboard's workflow pages (issue 20), served by a real ``poel-host dashboard``,
over HTTP: the list, newest first and filtered; a workflow's picture and table, capped
for a fan-in of 1,000 steps and fast; hostile step names and errors escaped; bad ids and
filters answered with a clear 4xx. (The picture in a real browser:
``test_dashboard_browser.py``; its layout alone: ``test_dashboard_graph.py``.)
"""

from __future__ import annotations

import re
import time

import pytest

from poel_host import Queue, Workflow
from tests.test_dashboard import TOKEN, sent_to_sign_in, sign_in
from tests.test_workflows import T, claim, finish

pytestmark = pytest.mark.process

SCRIPT = "<script>document.title='pwned'</script>"


@pytest.fixture
def queue(poel_dsn):
    made = Queue(poel_dsn, jobs={}, allow_unknown=True)
    yield made
    made.close()


def ended_diamond(queue: Queue, error: str = "it broke") -> tuple[int, dict[str, int]]:
    """A diamond a -> b, c -> d where a succeeded, b failed with ``error``, c is running
    and d was cancelled with b: its id and its steps' job ids."""
    flow = Workflow("diamond")
    a = flow.step("a", T)
    b = flow.step("b", T, after=a)
    c = flow.step("c", T, after=a)
    flow.step("d", T, after=[b, c])
    workflow_id = queue.enqueue_workflow(flow)
    store = queue._store
    finish(store, claim(store))  # a
    held = claim(store)  # b and c
    finish(store, {"b": held["b"]}, state="failed", error=error)
    shown = queue.workflow(workflow_id)
    assert shown is not None
    return workflow_id, {s.name: s.job_id for s in shown.steps}


def test_the_list_is_newest_first_filtered_by_state_and_links_each_workflow(queue, dashboard):
    failed, _ = ended_diamond(queue)
    plain = Workflow("plain")
    plain.step("only", T)
    running = queue.enqueue_workflow(plain)
    browser = dashboard()

    page = browser.get("/workflows")
    assert page.status == 200
    assert '<a href="/workflows" class="here">Workflows</a>' in page.text
    ids = [int(i) for i in re.findall(r'<a href="/workflows/(\d+)">', page.text)]
    assert ids == [running, failed]
    assert "it broke" in page.text and ">b</td>" in page.text  # the failed step and why
    only = browser.get("/workflows?state=failed").text
    assert re.findall(r'<a href="/workflows/(\d+)">', only) == [str(failed)]
    assert 'href="/workflows/' not in browser.get("/workflows?state=cancelled").text
    # The overview's navigation leads here too.
    assert 'href="/workflows"' in browser.get("/").text

    for path, status, says in (
        ("/workflows?state=bogus", 400, "unknown state"),
        ("/workflows?before=x", 400, "before must be a number"),
        ("/workflows/999999", 404, "no workflow with id 999999"),
        ("/workflows/abc", 400, "workflow id must be a number"),
        (f"/workflows/{failed}?steps=bogus", 400, "unknown step state"),
        (f"/workflows/{failed}?from=0", 400, "from out of range"),
    ):
        answer = browser.get(path)
        assert answer.status == status, (path, answer.text)
        assert says in answer.text and "Traceback" not in answer.text, path


def test_a_workflow_page_draws_its_steps_and_the_job_page_links_back(queue, dashboard):
    workflow_id, jobs = ended_diamond(queue)
    browser = dashboard()
    page = browser.get(f"/workflows/{workflow_id}")
    assert page.status == 200
    text = page.text
    assert 'id="state">failed<' in text
    assert f'<a href="/jobs/{jobs["b"]}">b</a>' in text  # the failed step
    assert '<pre id="failed-error">it broke</pre>' in text
    svg = text.split('<svg id="graph"')[1].split("</svg>")[0]
    nodes = dict(
        re.findall(r'<a class="node" href="/jobs/\d+" data-step="(\w)" data-state="(\w+)"', svg)
    )
    assert nodes == {"a": "succeeded", "b": "failed", "c": "running", "d": "cancelled"}
    edges = set(re.findall(r'data-from-step="(\w)" data-to-step="(\w)"', svg))
    assert edges == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    for name, job_id in jobs.items():
        assert f'href="/jobs/{job_id}" data-step="{name}"' in svg
    assert ">it broke</text>" in svg  # a failed step's error, in its box
    table = text.split('<table id="steps"')[1].split("</table>")[0]
    assert table.count("<tr>") == 5 and "steps 1 to 4 of 4" in text
    failed_only = browser.get(f"/workflows/{workflow_id}?steps=failed").text
    assert failed_only.split('<table id="steps"')[1].count("<tr>") == 2

    job = browser.get(f"/jobs/{jobs['d']}").text
    assert f'<a href="/workflows/{workflow_id}">diamond ({workflow_id})</a>, step d' in job


def test_a_fan_in_of_1000_steps_is_drawn_capped_and_fast(queue, dashboard):
    flow = Workflow("fan")
    start = flow.step("start", T)
    middle = flow.fan_out("part", T, [{}] * 1000, after=start)
    flow.step("merge", T, after=middle)
    workflow_id = queue.enqueue_workflow(flow)
    store = queue._store
    finish(store, claim(store))  # start
    parts = claim(store)
    assert len(parts) == 1000
    finish(store, {"part[7]": parts.pop("part[7]")}, state="failed", error="part 7 broke")
    finish(store, parts)
    browser = dashboard()
    browser.get(f"/workflows/{workflow_id}")  # warm: the dashboard's first connection

    took = time.monotonic()
    page = browser.get(f"/workflows/{workflow_id}")
    took = time.monotonic() - took
    assert page.status == 200
    assert took < 3.0, f"the page took {took:.2f}s"
    text = page.text
    assert len(text) < 200_000, len(text)
    svg = text.split('<svg id="graph"')[1].split("</svg>")[0]
    assert svg.count('<a class="node"') == 12  # start, 10 parts, merge
    assert 'data-step="part[7]" data-state="failed"' in svg  # the failure is drawn
    assert "+ 990 more" in svg and "990 succeeded" in svg
    assert svg.count('class="edge"') == 22
    assert "12 of 1002 steps drawn" in text
    assert "1000 succeeded" in text and "1 failed" in text and "1 cancelled" in text
    table = text.split('<table id="steps"')[1].split("</table>")[0]
    assert table.count("<tr>") == 101 and "steps 1 to 100 of 1002" in text
    last = browser.get(f"/workflows/{workflow_id}?from=1001").text
    assert "steps 1001 to 1002 of 1002" in last and 'id="earlier"' in last
    assert 'id="later"' not in last and " and 995 more</td>" in last  # merge's 1000
    failed = browser.get(f"/workflows/{workflow_id}?steps=failed").text
    assert "steps 1 to 1 of 1" in failed and "part 7 broke" in failed


def test_hostile_step_names_and_errors_are_text(queue, dashboard):
    attribute = "\"><img src=x onerror=alert(1)>'"
    flow = Workflow(SCRIPT)
    first = flow.step(SCRIPT, T)
    flow.step(attribute, T, after=first)
    workflow_id = queue.enqueue_workflow(flow)
    store = queue._store
    held = claim(store)
    error = f"ValueError: {SCRIPT} {attribute} " + "long " * 1000
    finish(store, held, state="failed", error=error)
    browser = dashboard()
    for path in (f"/workflows/{workflow_id}", "/workflows"):
        text = browser.get(path).text
        assert SCRIPT not in text and "<img" not in text, path
        assert "&lt;script&gt;" in text, path
    page = browser.get(f"/workflows/{workflow_id}").text
    assert "show all" in page and "long " * 1000 not in page
    assert "long " * 1000 in browser.get(f"/workflows/{workflow_id}?full=1").text


def test_with_a_token_a_stranger_sees_no_workflow(queue, dashboard):
    workflow_id, _ = ended_diamond(queue)
    browser = dashboard(POEL_DASHBOARD_TOKEN=TOKEN)
    for path in ("/workflows", f"/workflows/{workflow_id}", "/workflows?state=failed"):
        answer = browser.get(path, follow=False)
        assert sent_to_sign_in(answer, path), (path, answer.status)
        assert "diamond" not in answer.text and "it broke" not in answer.text, path
    page = sign_in(browser, next=f"/workflows/{workflow_id}")
    assert page.status == 200 and 'id="graph"' in page.text
    assert "<form" not in page.text.split("</header>")[1]  # read-only: no action here
