"""The slots every lane counts (``poel_host.worker.slots``), without a database."""

from __future__ import annotations

import time

import gevent
import gevent.event

from poel_host.worker.runners import Runners
from poel_host.worker.slots import Slots


def test_claims_in_flight_and_unfinished_items_both_take_slots():
    slots = Slots()
    assert len(slots) == 0 and slots.free_count(4) == 4 and slots.join(timeout=0)
    slots.reserve(3)  # a claim of three in flight
    assert slots.free_count(4) == 1 and not slots.join(timeout=0.01)
    slots.take()  # it came back with one row, submitted before the claim gives back its slots
    slots.unreserve(3)
    assert len(slots) == 1 and slots.free_count(4) == 3
    assert not slots.join(timeout=0.01)  # the item has not finished
    slots.finished()
    assert len(slots) == 0 and slots.join(timeout=0)


def test_free_count_goes_below_zero_when_capacity_shrinks():
    slots = Slots()
    slots.take(3)
    assert slots.free_count(2) == -1  # the process lane: a busy child was stopped


def test_wait_room_returns_at_once_while_there_is_room_else_when_a_slot_frees():
    slots = Slots()
    slots.take(2)
    with gevent.Timeout(0.5):
        slots.wait_room(lambda: slots.free_count(3))  # one free: no wait
    gevent.spawn_later(0.05, slots.finished)
    with gevent.Timeout(5):
        slots.wait_room(lambda: slots.free_count(2))
    assert slots.free_count(2) == 1
    slots.reserve(1)
    gevent.spawn_later(0.05, slots.unreserve, 1)  # a claim that came back empty frees too
    with gevent.Timeout(5):
        slots.wait_room(lambda: slots.free_count(2))


def test_wait_room_times_out_and_wakes_on_a_room_event_shared_with_the_lane():
    room = gevent.event.Event()  # the process pool's: also set when a child becomes ready
    slots = Slots(room=room)
    slots.take()
    started = time.monotonic()
    slots.wait_room(lambda: slots.free_count(1), timeout=0.05)
    assert time.monotonic() - started >= 0.04
    gevent.spawn_later(0.05, room.set)
    with gevent.Timeout(5):
        slots.wait_room(lambda: slots.free_count(1))
    assert len(slots) == 1  # woken, but the slot is still taken: the caller checks again


def test_a_runners_slot_stays_taken_until_its_item_really_returned():
    """A runner whose item is past every deadline still holds the slot while the handler
    runs (a thread job's runner waits for its thread): only its return frees it."""
    release = gevent.event.Event()
    runners: Runners[int] = Runners(1, lambda _: release.wait())
    runners.submit(1)
    gevent.sleep(0.05)  # the item runs, blocked
    assert runners.free_count() == 0 and len(runners) == 1
    assert not runners.join(timeout=0.05)
    waiting = gevent.spawn(runners.wait_available, 5)
    gevent.sleep(0.05)
    assert not waiting.dead  # no room while the handler has not returned
    release.set()
    with gevent.Timeout(5):
        waiting.join()
    assert runners.join(timeout=5) and runners.free_count() == 1


def test_items_a_kill_drops_unstarted_free_their_slots():
    release = gevent.event.Event()
    runners: Runners[int] = Runners(1, lambda _: release.wait())
    for i in range(3):
        runners.submit(i)
    gevent.sleep(0.05)
    assert runners.free_count() == -2
    assert runners.kill(timeout=5) == [1, 2]
    assert len(runners) == 0 and runners.join(timeout=0)
