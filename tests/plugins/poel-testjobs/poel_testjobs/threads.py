"""Thread job types (``executor="thread"``) for poel-host's own tests: the plugin
``poel-testthreads``, a second entry point of this distribution, so that workers loading
only ``poel-testjobs`` have no thread lane (tests count their claims and capacity)."""

from __future__ import annotations

from poel_host import Job, hookimpl
from poel_testjobs.plugin import Fanout, Keyed, Overrun, fanout, missing_key, overrun


@hookimpl
def register_jobs() -> list[Job]:
    thread = {"executor": "thread", "max_attempts": 1}
    return [
        Job(type="test.thread_fanout", schema=Fanout, handler=fanout, timeout=20, **thread),
        Job(
            type="test.thread_overrun",
            schema=Overrun,
            handler=overrun,
            timeout=0.5,
            max_attempts=2,
            backoff=0.05,
            executor="thread",
        ),
        Job(type="test.thread_missing_key", schema=Keyed, handler=missing_key, **thread),
    ]
