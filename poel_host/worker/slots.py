"""The capacity bookkeeping every executor shares: how many of a lane's slots are taken.

Each lane's executor (the greenlet and thread :class:`~.runners.Runners`, the process
pool) has its own idea of how many slots it has: a fixed ``size`` for runners, the ready
children (and the jobs claimed ahead for them) for the pool. What a slot is taken by is
the same for all of them, and so is when it frees, so that is counted here, once:

- a claim in flight holds the slots its rows may need (``reserve``/``unreserve``), so two
  claim loops never take together more jobs than the lane can start at once;
- an item submitted holds its slot (``take``) until its handler has *really* stopped
  (``finished``): not when its attempt was decided, nor when its timeout passed, but once
  the code that ran it returned (a thread cannot be killed: a timed-out thread job keeps
  its slot until its handler returns) or, for an item that never started, once it was
  dropped. A slot freed any earlier would let a claim take a job for a thread or child
  that is still busy.

``room`` is set whenever a slot frees, so a claim loop waiting for room wakes; a lane
whose capacity grows by other means (a child became ready) passes its own event, set on
those occasions too. ``empty`` is set while no slot is taken: what the drain and the test
kit's ``run_once`` wait for.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent.event


class Slots:
    """Slots taken by claims in flight and by items submitted and not finished."""

    def __init__(self, room: gevent.event.Event | None = None) -> None:
        self.claimed = 0  # slots held by claims in flight
        self.items = 0  # items submitted whose handler has not stopped yet
        self.room = room if room is not None else gevent.event.Event()  # set as a slot frees
        self.empty = gevent.event.Event()  # set while no slot is taken
        self.empty.set()

    def __len__(self) -> int:
        """Slots taken."""
        return self.claimed + self.items

    def free_count(self, capacity: int) -> int:
        """Slots free out of ``capacity`` (below zero when more than it are taken)."""
        return capacity - self.claimed - self.items

    # Claims -----------------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Hold ``n`` slots for a claim in flight; ``unreserve(n)`` gives them back."""
        self.claimed += n
        self.empty.clear()

    def unreserve(self, n: int) -> None:
        """The claim came back: its rows are each submitted (``take``) on their own."""
        assert 0 <= n <= self.claimed, (n, self.claimed)
        self.claimed -= n
        self._freed()

    # Items ------------------------------------------------------------------------------

    def take(self, n: int = 1) -> None:
        """``n`` items were submitted: their slots stay taken until ``finished``."""
        self.items += n
        self.empty.clear()

    def finished(self, n: int = 1) -> None:
        """``n`` items' handlers have really stopped (or the items were dropped unstarted)."""
        assert 0 <= n <= self.items, (n, self.items)
        self.items -= n
        self._freed()

    def _freed(self) -> None:
        self.room.set()
        if not self.claimed and not self.items:
            self.empty.set()

    # Waiting ----------------------------------------------------------------------------

    def wait_room(self, free_count: Callable[[], int], timeout: float | None = None) -> None:
        """Return at once if ``free_count()`` says there is room, else wait until a slot
        frees (or the lane's ``room`` is set otherwise), or ``timeout``. The caller checks
        again: ``free_count`` is the lane's own (the process pool may say none is free until
        half of its capacity is)."""
        if free_count() > 0:
            return
        self.room.clear()
        self.room.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no slot is taken; False on timeout."""
        return bool(self.empty.wait(timeout))
