"""Benchmark job types: the same three jobs every system in the suite runs.

- ``bench.noop`` does nothing: drain throughput measures the queue, not the handler.
- ``bench.stamp`` appends "enqueued started" wall-clock seconds to ``$BENCH_STAMP_FILE``
  the moment it starts: enqueue-to-start latency as a user sees it (the enqueuer writes
  the payload's ``t`` just before its INSERT), not as the database's ``now()`` says.
- ``bench.http`` waits on a local HTTP server that answers after a second
  (``$BENCH_HTTP_URL``): I/O-bound concurrency without holding a database connection
  per job, which a thousand ``pg_sleep`` calls would need. It uses ``http.client``, the
  standard library's own client: ``urllib.request`` costs about 40 µs more a request in
  building its opener and request objects, which is the client's cost, not the queue's.
- ``bench.sleep`` sleeps ``seconds`` (default 60) on its greenlet: a long job that holds
  a lease and nothing else, for the ``held`` benchmark (what holding jobs writes).
- ``bench.cpu_greenlet`` is the ``cpu`` benchmark's calibrated CPU loop
  (:mod:`poel_bench.cpu`) on the default greenlet executor: what that executor does with
  work it was not made for (one job at a time on the event loop, one core).

The process and thread variants (``bench.cpu``, ``bench.noop_process``,
``bench.cpu_thread``) are the plugins ``poel-bench-process`` and ``poel-bench-thread``
(``processes.py``, ``threads.py``), loaded only by the benchmarks that use them.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from http.client import HTTPConnection

from pydantic import BaseModel

from poel_bench.cpu import cpu_job
from poel_host import Job, JobContext, hookimpl


class Empty(BaseModel):
    pass


class Stamp(BaseModel):
    t: float


class Sleep(BaseModel):
    seconds: float = 60.0


def noop(payload: Empty, ctx: JobContext) -> None:
    pass


def stamp(payload: Stamp, ctx: JobContext) -> None:
    started = time.time()
    with open(os.environ["BENCH_STAMP_FILE"], "a") as out:
        out.write(f"{payload.t!r} {started!r}\n")


def http(payload: Empty, ctx: JobContext) -> None:
    url = urllib.parse.urlsplit(os.environ["BENCH_HTTP_URL"])
    conn = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request("GET", url.path or "/")
        conn.getresponse().read()
    finally:
        conn.close()


def sleep(payload: Sleep, ctx: JobContext) -> None:
    time.sleep(payload.seconds)  # gevent's, under serve: the greenlet waits, nothing runs


def cpu(payload: Empty, ctx: JobContext) -> None:
    cpu_job()


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(type="bench.noop", schema=Empty, handler=noop),
        Job(type="bench.stamp", schema=Stamp, handler=stamp),
        Job(type="bench.http", schema=Empty, handler=http),
        Job(type="bench.cpu_greenlet", schema=Empty, handler=cpu),
        Job(type="bench.sleep", schema=Sleep, handler=sleep),
    ]
