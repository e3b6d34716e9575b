"""``poel-host serve`` with timers around the process executor's steps, for profile.py.

    python benchmarks/trace_serve.py serve      (instead of ``poel-host serve``)

Patches for gevent exactly as the console script does, then wraps (in this process only;
nothing in ``poel_host`` changes) the steps a process job goes through, and at exit
writes what they took to ``$BENCH_TRACE_FILE`` as JSON, each as ``[when, value]`` pairs
(``when``: ``time.monotonic()`` at its end, the clock the harness has too, so a window
can be cut out):

- ``claim``: each ``Store.claim_jobs`` call of the process lane: its duration (the
  statement, its commit and the pool checkout) and the rows it returned;
- ``finish``: each ``Store.finish`` call (the completer's statement) and its rows;
- ``spawn_to_execute``: from ``Worker._spawn`` of a claimed row to the moment its greenlet
  calls ``ProcessPool.execute`` (scheduling, the executor's preamble, payload validation);
- ``round_trip``: ``ChildProcess.send`` of a job to its reply read by ``receive``: the
  pipe both ways, the child's reader thread and the handler, as serve sees it;
- ``child_gap``: from a child's reply to the next job sent to the same child: the time a
  ready child waits (the outcome handed on, the child back in ``idle``, a claim, a spawn).

Per child, ``round_trip`` + ``child_gap`` is its whole cycle, so their shares say where a
child's time goes. The timers cost a few µs a job; compare with the untraced rate.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import Any


def install(out: str) -> None:
    from poel_host.store import Store
    from poel_host.worker import processes, worker

    spans: dict[str, list[tuple[float, float]]] = {
        "claim": [],
        "claim_rows": [],
        "finish": [],
        "finish_rows": [],
        "spawn_to_execute": [],
        "round_trip": [],
        "child_gap": [],
    }
    now = time.monotonic
    spawned: dict[int, float] = {}
    process_types: set[str] = set()

    claim_jobs = Store.claim_jobs

    def traced_claim(self: Any, **kwargs: Any) -> Any:
        start = now()
        rows = claim_jobs(self, **kwargs)
        if process_types.intersection(kwargs["job_types"]):
            end = now()
            spans["claim"].append((end, end - start))
            spans["claim_rows"].append((end, len(rows)))
        return rows

    finish = Store.finish

    def traced_finish(self: Any, outcomes: Any) -> Any:
        start = now()
        written = finish(self, outcomes)
        end = now()
        spans["finish"].append((end, end - start))
        spans["finish_rows"].append((end, len(outcomes)))
        return written

    lanes = worker.Worker._lanes

    def traced_lanes(self: Any) -> Any:
        made = lanes(self)
        for lane in made:
            if lane.executor == "process":
                process_types.update(lane.job_types)
        return made

    spawn = worker.Worker._spawn

    def traced_spawn(self: Any, lane: Any, row: dict[str, Any]) -> None:
        if lane.executor == "process":
            spawned[row["id"]] = now()
        spawn(self, lane, row)

    execute = processes.ProcessPool.execute

    def traced_execute(self: Any, entry: Any, seconds: float) -> Any:
        started = spawned.pop(entry.row["id"], None)
        if started is not None:
            end = now()
            spans["spawn_to_execute"].append((end, end - started))
        return execute(self, entry, seconds)

    send = processes.ChildProcess.send

    def traced_send(self: Any, message: dict[str, Any]) -> None:
        if "job" in message:
            t = now()
            replied = getattr(self, "_replied", None)
            if replied is not None:
                spans["child_gap"].append((t, t - replied))
            self._sent = t
        send(self, message)

    receive = processes.ChildProcess.receive

    def traced_receive(self: Any) -> dict[str, Any]:
        message: dict[str, Any] = receive(self)
        if "done" in message:
            self._replied = now()
            spans["round_trip"].append((self._replied, self._replied - self._sent))
        elif "ready" in message:
            self._replied = now()  # ready counts as the first reply: the gap to its first job
        return message

    Store.claim_jobs = traced_claim
    Store.finish = traced_finish
    worker.Worker._lanes = traced_lanes
    worker.Worker._spawn = traced_spawn
    processes.ProcessPool.execute = traced_execute
    processes.ChildProcess.send = traced_send
    processes.ChildProcess.receive = traced_receive

    def dump() -> None:
        with open(out, "w") as f:
            json.dump(spans, f)

    atexit.register(dump)


def main() -> int:
    from poel_host.green import patch

    patch()  # first, as the console script does: nothing imports psycopg before it
    install(os.environ["BENCH_TRACE_FILE"])
    from poel_host.cli import main as cli_main

    return int(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
