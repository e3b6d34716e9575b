"""The adversarial campaign of issue 16, reduced for CI: a few hundred jobs, plain and
misbehaving, over two real ``poel-host serve`` processes whose connections are
terminated every two seconds (never a server restart here: CI shares the server).

One run (module-scoped), one test per invariant, so that a bullet of issue 16 not yet
fixed on a branch marks only the check it breaks as an expected failure (non-strict: it
passes once the fix lands) while the checks it cannot excuse stay strict. The logic and
the invariants are in ``poel_testchaos.campaign``, shared with ``benchmarks/campaign.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from poel_testchaos.campaign import Campaign, Options
from poel_testchaos.verdicts import KNOWN_BULLETS, KNOWN_ERRORS

from poel_host.testing import server_dsn

pytestmark = pytest.mark.chaos

JOBS = 600
SERVES = 2


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    options = Options(
        server=server_dsn(), jobs=JOBS, serves=SERVES, terminate_every_s=2.0, deadline_s=150
    )
    result = Campaign(options).run()
    print("\nCAMPAIGN " + json.dumps(result, default=str, sort_keys=True))
    return result


def _outside_known(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Violations by behaviours no known bullet explains (nor their foreign errors)."""
    return [
        item
        for item in items
        if item["behaviour"] not in KNOWN_BULLETS
        and not any(k in text for text in item.get("unexplained", []) for k in KNOWN_ERRORS)
    ]


def test_no_job_is_lost(report, figures):
    figures.update(report["counts"], jobs=report["jobs"], faults=report["faults"])
    figures.update(duration_s=report["duration_s"], known_bullets=report["known_bullets"])
    assert report["finished_before_deadline"], report["lost"][:10]
    assert report["counts"]["lost"] == 0, report["lost"][:10]


def test_every_serve_is_healthy_at_the_end_and_exits_0(report):
    assert report["unhealthy"] == []
    assert report["counts"]["unexplained_serve_deaths"] == 0, report["faults"]


def test_no_collateral_failure_beyond_the_known_bullets(report):
    assert _outside_known(report["collateral"]) == []


def test_no_overlap_beyond_the_known_bullets(report):
    assert _outside_known(report["overlapping"]) == []


@pytest.mark.xfail(
    strict=False,
    reason="issue 16: 'a leaked gevent.Timeout fails the next, innocent job', 'thread jobs"
    " touch the hub' (thread-executor branch) and 'an idle child that dies costs the next"
    " job an attempt' (process-executor branch) are not fixed here",
)
def test_no_collateral_failure(report):
    assert report["counts"]["collateral"] == 0, report["collateral"][:10]


@pytest.mark.xfail(
    strict=False,
    reason="issue 16: 'thread timeouts run jobs twice' (a timed-out thread's slot is counted"
    " free) is fixed on the thread-executor branch, not here",
)
def test_no_two_runs_of_a_job_overlap(report):
    assert report["counts"]["overlapping"] == 0, report["overlapping"][:10]


@pytest.mark.xfail(
    strict=False,
    reason="issue 16: 'helper programs outlive their job' (only the child's pid is signalled,"
    " not its process group) is fixed on the process-executor branch, not here",
)
def test_no_helper_program_outlives_its_serve(report):
    assert report["leftover_helpers"] == []
