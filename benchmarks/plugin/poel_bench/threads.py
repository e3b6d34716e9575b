"""``poel-bench-thread``: the CPU loop on the thread executor (``bench.cpu_thread``).

A plugin of its own for the same reason as ``poel-bench-process``: a loaded thread job
type gives ``serve`` a thread pool and a claim lane, which the greenlet benchmarks must
not pay for. Pure Python holds the GIL, so ``POEL_THREADS`` threads run it one at a time:
this shows what the thread executor is not for.
"""

from __future__ import annotations

from poel_bench.cpu import cpu_job
from poel_bench.plugin import Empty
from poel_host import Job, JobContext, hookimpl


def cpu(payload: Empty, ctx: JobContext) -> None:
    cpu_job()


@hookimpl
def register_jobs() -> list[Job]:
    return [Job(type="bench.cpu_thread", schema=Empty, handler=cpu, executor="thread")]
