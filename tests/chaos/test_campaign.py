"""The adversarial campaign of issue 16, reduced for CI: a few hundred jobs, plain and
misbehaving, over two real ``poel-host serve`` processes whose connections are
terminated every two seconds (never a server restart here: CI shares the server).

One run (module-scoped), one test per invariant, so that a failure names the invariant
broken. The logic and
the invariants are in ``poel_testchaos.campaign``, shared with ``benchmarks/campaign.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from poel_testchaos.campaign import Campaign, Options

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


def test_no_job_is_lost(report, figures):
    figures.update(report["counts"], jobs=report["jobs"], faults=report["faults"])
    figures.update(duration_s=report["duration_s"])
    assert report["finished_before_deadline"], report["lost"][:10]
    assert report["counts"]["lost"] == 0, report["lost"][:10]


def test_every_serve_is_healthy_at_the_end_and_exits_0(report):
    assert report["unhealthy"] == []
    assert report["counts"]["unexplained_serve_deaths"] == 0, report["faults"]


def test_no_collateral_failure(report):
    """Every job's final state and errors are explained by its own payload."""
    assert report["counts"]["collateral"] == 0, report["collateral"][:10]


def test_no_two_runs_of_a_job_overlap(report):
    assert report["counts"]["overlapping"] == 0, report["overlapping"][:10]


def test_no_helper_program_outlives_its_serve(report):
    assert report["leftover_helpers"] == []
