"""Supervised services: the worker's background loops, restarted when they die.

Each background concern (claiming, completing, leases, rescue, pruning, scheduling,
listening, the summary) is a :class:`Service` on its own greenlet. Errors a service
expects (the database being away) it handles itself. Anything else is a bug or a surprise,
and without supervision it would end that greenlet silently: a dead lease keeper loses
every lease while ``/health`` says 200. The supervisor logs such a death as one JSON line
with its traceback, restarts the service with backoff, and reports it as failing (which
``/health`` turns into a 503 naming it) until the restarted service completes a pass.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, MutableMapping
from typing import Any

import gevent

from poel_host.backoff import pause
from poel_host.errors import DatabaseUnavailable, error_text, one_line


class Service:
    """A background loop. ``run()`` loops until the greenlet is killed (or returns when it
    has nothing to do); it calls ``self.passed()`` after each pass that went well."""

    name = "service"

    def __init__(self) -> None:
        self._on_pass: Callable[[], None] = lambda: None

    def run(self) -> None:
        raise NotImplementedError

    def passed(self) -> None:
        """One pass of the loop went well: a failing report of this service is cleared."""
        self._on_pass()


class Periodic(Service):
    """A service that does one step, then waits: the rescuer, the pruner, the scheduler,
    the queue depths. The loop is here once: a step that finds the database unavailable is
    logged (``failed``: what failed) and tried again after a growing pause of at most
    ``retry_max_s``; a step that goes well reports a pass and says how long to wait."""

    failed = "a periodic step failed"
    retry_max_s = 5.0
    log: Any

    def first_wait(self) -> float:
        """Seconds before the first step."""
        return 0.0

    def step(self) -> float:
        """One pass; the seconds to wait before the next (raise DatabaseUnavailable)."""
        raise NotImplementedError

    def run(self) -> None:
        gevent.sleep(self.first_wait())
        failures = 0
        while True:
            try:
                wait = self.step()
            except DatabaseUnavailable as exc:
                failures += 1
                retry_in = min(self.retry_max_s, pause(failures))
                self.log.warning(self.failed, error=one_line(exc), retry_in=retry_in)
                gevent.sleep(retry_in)
                continue
            failures = 0
            self.passed()
            gevent.sleep(wait)


def in_batches(step: Callable[[int], int], *, batch: int, limit: int) -> int:
    """Call ``step(n)`` (work on up to ``n`` rows; how many it did) a batch at a time until
    a batch comes back short or ``limit`` rows are done, yielding to the other greenlets
    between batches: a periodic pass over a large backlog (the pruner's, the archiver's)
    stays bounded and never holds the hub. The rows done."""
    done = 0
    while done < limit:
        asked = min(batch, limit - done)
        rows = step(asked)
        done += rows
        if rows < asked:
            break
        gevent.sleep(0)
    return done


class Supervisor:
    """Runs services, restarts those that die, and knows which are failing."""

    def __init__(self, *, log: Any, problems: MutableMapping[str, str] | None = None) -> None:
        self.log = log
        # service name -> why it last died (with the worker's other problems, if given)
        self.failing: MutableMapping[str, str] = problems if problems is not None else {}
        self.restarts: collections.Counter[str] = collections.Counter()  # for /metrics
        self.greenlets: list[gevent.Greenlet] = []

    def start(self, service: Service) -> gevent.Greenlet:
        service._on_pass = lambda: self._passed(service.name)
        greenlet = gevent.spawn(self._supervise, service)
        self.greenlets.append(greenlet)
        return greenlet

    def _passed(self, name: str) -> None:
        if self.failing.pop(name, None) is not None:
            self.log.info("service running again", service=name)

    def _supervise(self, service: Service) -> None:
        deaths = 0
        while True:
            try:
                service.run()
                return  # nothing (more) to do: a scheduler without scheduled jobs
            except Exception as exc:  # reported, then restarted
                deaths += 1
                self.restarts[service.name] += 1
                self.failing[service.name] = f"died and is restarting: {error_text(exc)}"
                self.log.error(
                    "service died; restarting",
                    service=service.name,
                    error=error_text(exc),
                    restart_in=pause(deaths),
                    exc_info=exc,
                )
                gevent.sleep(pause(deaths))

    def stop(self, timeout: float = 5) -> None:
        gevent.killall(self.greenlets, timeout=timeout)
