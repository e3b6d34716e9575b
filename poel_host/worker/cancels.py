"""Stopping a running job someone cancelled (``Queue.cancel``, ``poel-host jobs cancel``,
the dashboard), within about a second, on the worker that holds it.

The request is a flag on the job's row (``cancel_requested``) and a ``NOTIFY poel_cancel``
(see ``cancel_job`` in the SQL). The listener hears it at once; the lease keeper's
heartbeat also reports held jobs whose flag is set, for a worker that missed the
notification (its LISTEN connection was down, the job was claimed as the request came).
Either calls :func:`request`, which stops the attempt the way its executor allows:

- **greenlet**: :class:`CancelRequested` is thrown into the greenlet running the handler,
  as a timeout is: a query in flight is cancelled on the server and its connection
  discarded (``job_connections.abandon``);
- **thread**: a thread cannot be interrupted: its ``ctx.cancelled`` is set (so are
  ``check_cancelled`` and ``wait_cancelled``) and the job keeps its slot until the handler
  really returns;
- **process**: the greenlet waiting for the child gets :class:`CancelRequested`, and the
  child is stopped with its whole process group, then replaced (``child_pool``).

An attempt cancelled so ends ``cancelled``, not retried; a handler that returned anyway
``succeeded``. Whatever else ends it (a shutdown's hand-back, a snooze, a rescue), the
table's trigger ``jobs_cancel_requested`` keeps the job from being queued again.
"""

from __future__ import annotations

from typing import Any

import gevent

from poel_host.worker.held import CLAIMED, RUNNING, Held, HeldJob


class CancelRequested(BaseException):
    """Thrown into the greenlet running a cancelled job. A ``BaseException``, so that a
    handler's ``except Exception`` does not swallow it."""


def request(held: Held, job_id: int) -> bool:
    """Stop the attempt this worker holds of ``job_id``, asked to stop; False if it holds
    none, or none that can still be stopped (its outcome is being written)."""
    entry = held.get(job_id)
    if entry is None or entry.cancel_requested or entry.phase not in (CLAIMED, RUNNING):
        return False
    entry.cancel_requested = True  # read when its handler starts, or when it ended
    entry.ctx.log.info("job cancel requested: stopping it")
    if entry.interrupt is not None:
        entry.interrupt()
    return True


def interrupt_greenlet(entry: HeldJob) -> None:
    """Make ``entry.interrupt`` throw :class:`CancelRequested` into the calling greenlet
    (which runs, or waits on a child for, the entry's handler) until ``entry.interrupt`` is
    reset (which also breaks the reference cycle the two make)."""
    entry.interrupt = _Interrupt(entry, gevent.getcurrent())


class _Interrupt:
    """The throw runs from the hub, as gevent's own ``kill``, and only if the handler still
    runs then: a runner that moved on to another job is not hit. (A class, not closures:
    two closures naming each other would be a cycle holding the entry after its job.)"""

    __slots__ = ("entry", "greenlet")

    def __init__(self, entry: HeldJob, greenlet: Any) -> None:
        self.entry, self.greenlet = entry, greenlet

    def __call__(self) -> None:
        gevent.get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if self.entry.interrupt is self and not self.greenlet.dead:
            self.greenlet.throw(CancelRequested(f"job {self.entry.id} was cancelled"))


def interrupt_thread(entry: HeldJob) -> None:
    """Make ``entry.interrupt`` set the thread job's own cancellation (``ctx.cancelled``)."""
    event: Any = entry.ctx._cancel_event
    entry.interrupt = event.set
