"""Stopping a cancelled job on this worker (``worker/cancels.py``), in process: what a
request does to the attempt it names, and never to another (a runner that moved on to its
next job, an attempt whose outcome is being written, a handler that swallows
``Exception``). Under real serve processes: ``test_serve_cancel.py``."""

from __future__ import annotations

import datetime as dt

import gevent
import structlog

from poel_host.jobs import JobContext
from poel_host.worker.cancels import CancelRequested, interrupt_greenlet, request
from poel_host.worker.held import PENDING, RUNNING, HeldJob


def held_job(job_id: int = 1) -> HeldJob:
    ctx = JobContext(
        job_id, "t", 1, 3, "default", dt.datetime.now(dt.timezone.utc), log=structlog.get_logger()
    )
    return HeldJob(row={"id": job_id, "lease_token": "x"}, ctx=ctx)


def test_a_request_for_a_job_not_held_or_being_written_does_nothing() -> None:
    entry = held_job()
    entry.move(RUNNING)
    entry.move(PENDING)
    called: list[int] = []
    entry.interrupt = lambda: called.append(1)
    assert request({}, 1) is False
    assert request({1: entry}, 1) is False
    assert called == [] and entry.cancel_requested is False


def test_a_running_handler_is_interrupted_even_if_it_catches_exception() -> None:
    entry = held_job()
    entry.move(RUNNING)
    seen: list[str] = []

    def handler() -> None:
        interrupt_greenlet(entry)
        try:
            try:
                gevent.sleep(10)
            except Exception:  # noqa: BLE001 - what a careless handler does
                seen.append("swallowed")
        except CancelRequested:
            seen.append("cancelled")
        finally:
            entry.interrupt = None

    runner = gevent.spawn(handler)
    gevent.sleep(0)
    assert request({1: entry}, 1) is True
    assert request({1: entry}, 1) is False  # once
    runner.join(timeout=2)
    assert seen == ["cancelled"] and entry.cancel_requested


def test_an_interrupt_that_comes_after_the_handler_ended_spares_the_next_job() -> None:
    first, second = held_job(1), held_job(2)
    first.move(RUNNING)
    seen: list[str] = []

    def runner() -> None:
        interrupt_greenlet(first)
        late = first.interrupt
        first.interrupt = None  # the first job's handler ended
        late()  # its cancel arrives now, while the runner runs the next job
        try:
            gevent.sleep(0.2)
            seen.append("second job ran to its end")
        except CancelRequested:
            seen.append("second job hit")

    gevent.spawn(runner).join(timeout=2)
    assert seen == ["second job ran to its end"]
    assert second.cancel_requested is False
