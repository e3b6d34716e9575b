"""The runner greenlets that run claimed jobs (``poel_host.worker.runners``), without a database."""

from __future__ import annotations

import contextvars

import gevent
import gevent.event

from poel_host.worker.runners import Runners


def test_short_items_run_in_order_on_one_greenlet_without_spawning_per_item():
    seen: list[tuple[int, object]] = []
    runners: Runners[int] = Runners(10, lambda i: seen.append((i, gevent.getcurrent())))
    for round_ in range(3):
        for i in range(10):
            runners.submit(round_ * 10 + i)
        assert runners.join(timeout=5)
    assert [i for i, _ in seen] == list(range(30))
    # Items that never wait run back to back on the runner that took a round's first one,
    # and runners outlive their items: 30 items, at most 10 greenlets ever.
    for round_ in range(3):
        assert len({id(g) for _, g in seen[round_ * 10 : round_ * 10 + 10]}) == 1
    assert len({id(g) for _, g in seen}) <= 10
    assert len(runners) == 0 and runners.free_count() == 10


def test_at_most_size_items_run_at_once_and_waiting_items_use_other_runners():
    release = gevent.event.Event()
    running: list[int] = []
    peak = 0

    def run(i: int) -> None:
        nonlocal peak
        running.append(i)
        peak = max(peak, len(running))
        release.wait()
        running.remove(i)

    runners: Runners[int] = Runners(3, run)
    for i in range(5):
        runners.submit(i)
    assert runners.free_count() == -2  # the claim loop only claims when this is positive
    gevent.sleep(0.05)
    assert sorted(running) == [0, 1, 2]  # three wait on I/O at once; two queue behind them
    assert not runners.join(timeout=0.01)
    release.set()
    assert runners.join(timeout=5)
    assert peak == 3 and runners.free_count() == 3


def test_wait_available_returns_when_an_item_finishes():
    release = gevent.event.Event()
    runners: Runners[int] = Runners(1, lambda _: release.wait())
    runners.submit(1)
    assert runners.free_count() == 0
    gevent.spawn_later(0.05, release.set)
    with gevent.Timeout(5):
        runners.wait_available()
    assert runners.free_count() == 1


def test_kill_interrupts_running_items_and_returns_those_never_started():
    interrupted: list[int] = []

    def run(i: int) -> None:
        try:
            gevent.sleep(30)
        except gevent.GreenletExit:
            interrupted.append(i)  # the worker's job path catches it and returns, like this

    runners: Runners[int] = Runners(2, run)
    for i in range(4):
        runners.submit(i)
    gevent.sleep(0.05)
    with gevent.Timeout(5):
        unstarted = runners.kill(timeout=5)
    assert sorted(interrupted) == [0, 1]
    assert unstarted == [2, 3]


def test_each_item_starts_with_empty_context_variables_even_on_the_same_runner():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, object]] = []

    def run(i: int) -> None:
        seen.append((var.get(), gevent.getcurrent()))
        var.set(f"set by item {i}")

    runners: Runners[int] = Runners(4, run)
    for i in range(3):
        runners.submit(i)
    assert runners.join(timeout=5)
    assert len({id(g) for _, g in seen}) == 1  # one runner ran all three
    assert [value for value, _ in seen] == ["unset"] * 3


def test_a_timer_left_running_by_a_finished_item_does_not_kill_its_idle_runner():
    ran: list[int] = []
    timers: list[gevent.Timeout] = []

    def run(i: int) -> None:
        if i == 0:
            timers.append(gevent.Timeout(0.05))
            timers[0].start()  # started and never cancelled: a handler's bug
        ran.append(i)

    runners: Runners[int] = Runners(1, run)
    runners.submit(0)
    assert runners.join(timeout=5)
    (runner,) = runners._greenlets
    with gevent.Timeout(5):
        while timers[0].pending:  # until the timer has fired into the idle runner
            gevent.sleep(0.01)
    runners.submit(1)
    assert runners.join(timeout=5)
    assert ran == [0, 1]
    assert runners._greenlets == {runner}  # the same runner lived on


def test_idle_runners_end_after_idle_timeout_and_new_ones_start_when_needed():
    release = gevent.event.Event()
    done: list[int] = []

    def run(i: int) -> None:
        release.wait()
        done.append(i)

    runners: Runners[int] = Runners(5, run, idle_timeout=0.05)
    for i in range(5):
        runners.submit(i)
    assert len(runners._greenlets) == 5
    release.set()
    assert runners.join(timeout=5)
    with gevent.Timeout(5):
        while runners._greenlets:  # a burst's runners go once idle
            gevent.sleep(0.01)
    runners.submit(7)
    assert runners.join(timeout=5)
    assert sorted(done) == [0, 1, 2, 3, 4, 7]


def test_reserved_slots_count_as_taken_until_unreserved():
    runners: Runners[int] = Runners(4, lambda _: None)
    runners.reserve(4)  # a claim of four in flight
    assert runners.free_count() == 0
    assert (len(runners), runners.running()) == (4, 0)  # taken, but nothing runs yet
    assert not runners.join(timeout=0.01)
    gevent.spawn_later(0.05, runners.unreserve, 3)  # it came back with one job
    with gevent.Timeout(5):
        runners.wait_available()
    assert runners.free_count() == 3
    runners.unreserve(1)
    assert runners.join(timeout=5)


def test_a_timer_one_item_leaked_never_fails_the_next_item_on_the_same_runner():
    """An item that starts a ``gevent.Timeout`` and returns without cancelling it: when
    the timer fires, its runner runs another item (or idles), which is not interrupted."""
    done: list[str] = []

    def run(item: str) -> None:
        if item == "leak":
            gevent.Timeout(0.05).start()
        else:
            gevent.sleep(0.2)  # the leaked timer fires meanwhile
        done.append(item)

    runners: Runners[str] = Runners(1, run)
    runners.submit("leak")
    assert runners.join(timeout=5)
    runners.submit("innocent")
    assert runners.join(timeout=5)
    assert done == ["leak", "innocent"]


def test_a_timer_fires_into_the_item_that_started_it_even_in_a_copied_context():
    """The guard only drops timers of finished items: an item's own timer interrupts it,
    also where the item runs code in a copy of its context."""
    caught: list[str] = []

    def run(item: int) -> None:
        try:
            with gevent.Timeout(0.05):
                contextvars.copy_context().run(gevent.sleep, 5)
        except gevent.Timeout as exc:
            caught.append(str(exc))

    runners: Runners[int] = Runners(1, run)
    runners.submit(1)
    assert runners.join(timeout=5)
    assert caught == ["0.05 seconds"]
