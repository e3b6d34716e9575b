"""``poel-bench-process``: the benchmark's job types on the process executor.

A plugin of its own (``POEL_LOAD_PLUGINS=poel-bench,poel-bench-process``) because a
loaded process job type makes ``serve`` start ``POEL_PROCESSES`` children and claim for
them: the greenlet benchmarks load ``poel-bench`` alone and pay nothing for it.

- ``bench.cpu``: the calibrated CPU loop (:mod:`poel_bench.cpu`) in a child process.
- ``bench.noop_process``: nothing, in a child process: draining it measures the process
  executor's cost per job (the claim, the round trip to a child, the completion).
"""

from __future__ import annotations

from poel_bench.cpu import cpu_job
from poel_bench.plugin import Empty
from poel_host import Job, JobContext, hookimpl


def cpu(payload: Empty, ctx: JobContext) -> None:
    cpu_job()


def noop(payload: Empty, ctx: JobContext) -> None:
    pass


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(type="bench.cpu", schema=Empty, handler=cpu, executor="process"),
        Job(type="bench.noop_process", schema=Empty, handler=noop, executor="process"),
    ]
