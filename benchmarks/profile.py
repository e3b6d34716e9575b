"""Where a ``poel-host serve`` process spends its time while it drains no-op jobs.

    python benchmarks/profile.py [--n 40000] [--concurrency 100] [--log warning] [--duration 8]

Starts serve on a fresh ``poel_bench_*`` database full of queued jobs, samples it with
py-spy while it drains (idle samples, i.e. the gevent hub waiting on the network, are
left out by py-spy), and prints the functions with the most samples: by self time (the
leaf frame) and inclusive (anywhere on the stack), as percentages of the busy samples.
The raw stacks are kept (``--out``) for a flame graph (``py-spy``'s folded format).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
from adapters.poel import Poel
from common import (
    create_database,
    drop_database,
    scratch_name,
    start_process,
    stop_process,
    wait_for,
)

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
_LINE = re.compile(r":\d+\)$")


def aggregate(folded: Path, top: int) -> str:
    """Self and inclusive sample counts per function from py-spy's folded stacks."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    out = [f"{total} busy samples", "", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in anywhere.most_common(top * 2)]
    return "\n".join(out)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--log", default="warning")
    parser.add_argument("--duration", type=int, default=8, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples a second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("/tmp/poel-serve.folded"))
    args = parser.parse_args()
    poel = Poel(args.concurrency, args.log)
    name = scratch_name("profile")
    url = create_database(name)
    try:
        poel.install(url)
        with psycopg.connect(url, autocommit=True) as conn:
            poel.insert(conn, args.n, "noop")
            since = poel.mark(conn)
            argv, env = poel.command(url, "noop")
            proc = start_process(argv, env, Path("/tmp/poel-profile-serve.log"))
            try:
                wait_for(lambda: poel.done(conn, since) > 0, 60, "the first job", proc)
                time.sleep(0.5)  # past start-up
                done_before, cpu_before = poel.done(conn, since), cpu_seconds(proc.pid)
                record = ["record", "--pid", str(proc.pid), "--duration", str(args.duration)]
                sampling = ["--rate", str(args.rate), "--format", "raw", "-o", str(args.out)]
                sampling += ["--gil"]  # only the thread running Python: waits are not CPU
                subprocess.run(
                    [PY_SPY, *record, *sampling],
                    check=True,
                    capture_output=True,
                )
                done = poel.done(conn, since) - done_before
                cpu = cpu_seconds(proc.pid) - cpu_before
            finally:
                stop_process(proc)
        print(f"serve c={args.concurrency} log={args.log}: {done} jobs done while sampling")
        print(f"serve's CPU time: {1e6 * cpu / max(done, 1):.0f} µs a job (sampling included)")
        print(aggregate(args.out, args.top))
    finally:
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
