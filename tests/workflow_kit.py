"""What the tests of workflows run in-process share (test_workflow_steps, _retry, _cancel,
_retention): a worker and a queue client with the workflow steps' plugin
(``poel-testworkflows``), stores on connections of their own, and steps claimed and ended
through a store as a worker does, so that each test chooses who goes first.

A test module binds the fixtures it uses by name (``queue = workflow_kit.queue``), so that
they are that module's only, not every test's as a conftest's would be; none of them
depends on another of them, so each can be bound alone.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from poel_host import Queue, Workflow
from poel_host.database import KeptConnection
from poel_host.logs import get_logger
from poel_host.plugins import load_plugins
from poel_host.settings import Settings
from poel_host.store import Store
from poel_host.worker import Worker
from poel_host.workflows import WorkflowState

PLUGINS = ["poel-testworkflows"]
T = "wf.step"  # a job type no worker handles: its steps are claimed and ended by hand


@pytest.fixture
def worker(poel_settings: Settings) -> Iterator[Worker]:
    """An in-process worker with the workflow steps' plugin (``flows.*`` job types)."""
    plugins = load_plugins(PLUGINS)
    assert plugins.failed == []
    made = Worker(poel_settings, plugins, log=get_logger())
    yield made
    made.close()


@pytest.fixture
def queue(poel_settings: Settings) -> Iterator[Queue]:
    """A queue client that validates the ``flows.*`` payloads and takes any other type."""
    made = Queue(poel_settings.dsn, jobs=load_plugins(PLUGINS).jobs, allow_unknown=True)
    yield made
    made.close()


@contextlib.contextmanager
def _stores(settings: Settings) -> Iterator[Callable[[], Store]]:
    kept: list[KeptConnection] = []

    def make() -> Store:
        kept.append(KeptConnection(settings.dsn))
        return Store(settings.schema_name, kept[-1])

    try:
        yield make
    finally:
        for conn in kept:
            conn.close()


@pytest.fixture
def new_store(poel_settings: Settings) -> Iterator[Callable[[], Store]]:
    """``new_store()``: a Store on a connection of its own, closed at the end."""
    with _stores(poel_settings) as make:
        yield make


@pytest.fixture
def store(poel_settings: Settings) -> Iterator[Store]:
    """A Store on a connection of its own (as ``new_store()`` makes one)."""
    with _stores(poel_settings) as make:
        yield make()


def enqueue_chain(queue: Queue, name: str, *steps: str) -> int:
    """Enqueue a workflow of ``T`` steps with these names, each after the one before; its id."""
    flow = Workflow(name)
    flow.chain(*((step, T) for step in steps))
    return queue.enqueue_workflow(flow)


def run_until_done(
    worker: Worker, queue: Queue, workflow_id: int, rounds: int = 20
) -> WorkflowState:
    """Run the worker a round at a time until the workflow finished; its state."""
    for _ in range(rounds):
        worker.run_once()
        state = queue.workflow(workflow_id)
        assert state is not None
        if state.finished_at is not None:
            return state
    raise AssertionError(f"workflow {workflow_id} did not finish: {queue.workflow(workflow_id)}")


def claim(
    store: Store, job_type: str = T, limit: int = 10, *, owner: str = "t", lease_ms: int = 60_000
) -> tuple[str, list[dict[str, Any]]]:
    """Claim up to ``limit`` due jobs of ``job_type`` as a worker would: the claim's lease
    token and the rows."""
    token = str(uuid.uuid4())
    rows = store.claim_jobs(
        job_types=[job_type], queues=None, limit=limit, owner=owner, token=token, lease_ms=lease_ms
    )
    return token, rows


def outcome(job_id: int, token: str, state: str, delay_ms: float = 0.0) -> tuple[Any, ...]:
    """A claimed attempt's outcome as ``Store.finish`` takes it (an error unless it
    succeeded; ``queued`` is a retry after ``delay_ms``)."""
    error = None if state == "succeeded" else f"{state} on purpose"
    return (job_id, token, state, error, delay_ms, None, None, None, None)


def end(store: Store, job_id: int, token: str, state: str) -> None:
    """Record one claimed attempt's outcome, which must be written."""
    assert store.finish([outcome(job_id, token, state)]) == {job_id}


def workflow_row(conn: Any, workflow_id: int) -> dict[str, Any]:
    """The workflow's row in ``poel.workflows`` (``steps_left`` among its columns)."""
    found: dict[str, Any] = conn.execute(
        "SELECT * FROM poel.workflows WHERE id = %s", [workflow_id]
    ).fetchone()
    return found
