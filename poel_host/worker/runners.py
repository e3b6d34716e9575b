"""Runner greenlets: run claimed jobs, at most ``size`` at a time.

A greenlet per job (``gevent.pool.Pool.spawn``) costs about 12 µs to create, schedule
and switch into: as much as the rest of a no-op job's path. Runners live on instead:
one that finishes a job takes the next waiting one without going through the hub, so a
batch of short jobs runs on one greenlet, and a job that waits on I/O lets the next
runner take the next job. Runners are started as jobs need them, up to ``size``, and a
runner idle for ``idle_timeout`` seconds ends, so memory goes back down after a burst.

Each item runs in a new, empty ``contextvars.Context``, as it would on a new greenlet, so
context variables a job sets (``structlog.contextvars.bind_contextvars``, a tracing span)
never leak into the next job on the same runner. Greenlet-local state (``threading.local``
under gevent) does persist from job to job, as it does on a thread pool's threads.

A ``gevent.Timeout`` throws into the greenlet that started it, whatever that greenlet
runs by then: a timer one job started and never cancelled would fail the next, innocent
job on the same runner. So each item's context holds the item (``_ITEM``), a timer
started on a runner remembers the item it was started for, and one that fires when its
greenlet's context holds another item (or none: an idle runner) is dropped with a warning
naming the leaking job. Context copies an item makes carry the item too, so its own timers
still interrupt it there. The cost: a context variable set per item, and a lookup per
timer started.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gevent
import gevent.queue
import gevent.timeout

from poel_host.logs import get_logger
from poel_host.worker.slots import Slots

T = TypeVar("T")

_ITEM: contextvars.ContextVar[Any] = contextvars.ContextVar("poel_runner_item")
_GUARDED = "_poel_item"  # the attribute of a started Timeout: the item it was started for


def guard_timeouts() -> None:
    """Make gevent's timers drop what they would throw into a runner's later item (once)."""
    cls: Any = gevent.timeout.Timeout
    if getattr(cls, "_poel_guarded", False):
        return
    start, expire = cls.start, cls._on_expiration

    def start_for_item(self: Any) -> None:
        setattr(self, _GUARDED, _ITEM.get(None))
        start(self)

    def expire_into_item(self: Any, greenlet: Any, exc: Any) -> None:
        item = getattr(self, _GUARDED, None)
        if item is not None:
            context = greenlet.gr_context
            if context is None or context.get(_ITEM) is not item:
                setattr(self, _GUARDED, None)  # nor keep the finished item alive
                get_logger().warning(
                    "a finished job's gevent.Timeout fired; ignored",
                    leaked_by=describe(item),
                    timeout=str(self),
                )
                return
        expire(self, greenlet, exc)

    cls.start, cls._on_expiration, cls._poel_guarded = start_for_item, expire_into_item, True


def describe(item: Any) -> str:
    """What a log line calls an item: its job type for a held job."""
    job_type = getattr(getattr(item, "ctx", None), "job_type", None)
    return str(job_type) if job_type is not None else type(item).__name__


class Runners(Generic[T]):
    """Run ``run(item)`` for each submitted item on up to ``size`` greenlets."""

    def __init__(self, size: int, run: Callable[[T], None], idle_timeout: float = 60.0) -> None:
        self.size = size
        self._run = run
        self._idle_timeout = idle_timeout
        self._todo: gevent.queue.SimpleQueue[T] = gevent.queue.SimpleQueue()
        self._greenlets: set[gevent.Greenlet] = set()
        self._running = 0  # items being run now
        self.slots = Slots()  # taken from submit() until the item's run returned
        self._closing = False
        guard_timeouts()

    def __len__(self) -> int:
        """Items submitted and not finished yet, and slots held by claims in flight."""
        return len(self.slots)

    def running(self) -> int:
        """Items submitted and not finished yet (a claim in flight runs nothing)."""
        return self.slots.items

    def capacity(self) -> int:
        return self.size

    def free_count(self) -> int:
        return self.slots.free_count(self.size)

    def wait_available(self, timeout: float | None = None) -> None:
        self.slots.wait_room(self.free_count, timeout)

    def reserve(self, n: int) -> None:
        """Hold ``n`` slots for items about to be submitted (a claim in flight), so that
        ``free_count()`` counts them as taken; ``unreserve()`` gives them back."""
        self.slots.reserve(n)

    def unreserve(self, n: int) -> None:
        self.slots.unreserve(n)

    def submit(self, item: T) -> None:
        """Queue ``item`` for the next free runner, starting one if none is free."""
        self.slots.take()
        self._todo.put(item)
        idle = len(self._greenlets) - self._running
        if self._todo.qsize() > idle and len(self._greenlets) < self.size:
            self._greenlets.add(gevent.spawn(self._loop))

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted item has finished; False on timeout."""
        return self.slots.join(timeout)

    def kill(self, timeout: float | None = None) -> list[T]:
        """Stop the runners (GreenletExit in running jobs); returns the items never started."""
        self._closing = True
        unstarted: list[T] = []
        while not self._todo.empty():
            unstarted.append(self._todo.get_nowait())
        self.slots.finished(len(unstarted))  # dropped: no handler of theirs runs
        gevent.killall(list(self._greenlets), timeout=timeout)
        return unstarted

    def _loop(self) -> None:
        try:
            while not self._closing:
                try:
                    item = self._todo.get(timeout=self._idle_timeout)
                except gevent.queue.Empty:
                    if self._todo.empty():
                        return  # idle too long; submit() starts another when needed
                    continue
                except gevent.Timeout:
                    # A timer started outside any item (not guarded), firing while this
                    # runner is idle: nothing of it runs here.
                    continue
                self._running += 1
                context = contextvars.Context()
                try:
                    context.run(_ITEM.set, item)
                    context.run(self._run, item)
                finally:
                    self._running -= 1
                    self.slots.finished()  # its handler returned (or raised)
                    # An idle runner must not keep its last job (and payload) alive.
                    del item, context
        finally:
            self._greenlets.discard(gevent.getcurrent())
