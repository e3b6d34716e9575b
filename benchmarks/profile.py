"""Where a ``poel-host serve`` process spends its time while it drains no-op jobs.

    python benchmarks/profile.py [--n 40000] [--concurrency 100] [--log warning] [--duration 8]
    python benchmarks/profile.py --executor process [--processes 2] [--n 20000]
    python benchmarks/profile.py --cpu-only [--n 80000 --duration 4]

Starts serve on a fresh ``poel_bench_*`` database full of queued jobs, samples it with
py-spy while it drains (idle samples, i.e. the gevent hub waiting on the network, are
left out by py-spy), and prints the functions with the most samples: by self time (the
leaf frame) and inclusive (anywhere on the stack), as percentages of the busy samples.
The raw stacks are kept (``--out``) for a flame graph (``py-spy``'s folded format).

With ``--executor process`` the jobs are ``bench.noop_process`` (``POEL_PROCESSES``
children): one child is sampled too, at the same time (``--out`` with ``.child`` added),
and the CPU a job costs is given for each process involved: serve, the children and the
run database's PostgreSQL backends, beside the wall time a job takes (the rate's inverse)
and how busy the whole machine was (from ``/proc/stat``: other sessions' load shows
there).

``--cpu-only`` samples nothing either: the CPU a job costs, with no sampler pausing serve
(py-spy stops it for each sample), the figure to compare two commits by.

``--trace`` (process executor only) samples nothing with py-spy: it runs serve through
``trace_serve.py``, which times the steps of each process job (the claim, the spawn, the
round trip to the child, the gap before a child's next job, the completion), and prints
them for the same window, with each step's share of the children's time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
from adapters.poel import Poel, PoelExecutor
from common import (
    BENCH_DIR,
    create_database,
    drop_database,
    percentile,
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


def trace_summary(path: Path, start: float, end: float, processes: int) -> str:
    """trace_serve.py's timings within [start, end]: per step, how many, the mean, p50,
    p95, and the share of the children's time (``processes`` times the window)."""
    spans = json.loads(path.read_text())
    window = end - start
    out = [f"steps timed in serve, {window:.1f} s window, {processes} children:", ""]
    out += ["| step | count | mean | p50 | p95 | share of children's time |"]
    out += ["|---|---:|---:|---:|---:|---:|"]
    for name in ("claim", "spawn_to_execute", "round_trip", "child_gap", "finish"):
        values = [v for t, v in spans.get(name, []) if start <= t <= end]
        if not values:
            continue
        share = f"{100 * sum(values) / (processes * window):.0f}%"
        if name in ("claim", "finish"):
            share = "(serve)"  # statements of serve's, not a child's time
        cells = [f"{1e6 * x:,.0f} µs" for x in (statistics.mean(values),)]
        cells += [f"{1e6 * percentile(values, p):,.0f} µs" for p in (50, 95)]
        out.append(f"| {name} | {len(values)} | " + " | ".join(cells) + f" | {share} |")
    for name in ("claim_rows", "finish_rows"):
        rows = [v for t, v in spans.get(name, []) if start <= t <= end]
        if rows:
            out.append(f"\n{name}: {statistics.mean(rows):.2f} a statement on average")
    return "\n".join(out)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's ``/proc/PID/task/TID/children``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU so far, from /proc/stat (idle and iowait idle)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--log", default="warning")
    parser.add_argument("--duration", type=int, default=8, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples a second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("/tmp/poel-serve.folded"))
    parser.add_argument("--executor", choices=["greenlet", "process"], default="greenlet")
    parser.add_argument("--processes", type=int, default=2, help="POEL_PROCESSES")
    parser.add_argument("--trace", action="store_true", help="time the steps, no py-spy")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="no py-spy: only the CPU a job costs, without the sampler's pauses in it",
    )
    args = parser.parse_args()
    if args.trace and args.executor != "process":
        parser.error("--trace times the process executor's steps: use --executor process")
    poel: Poel = Poel(args.concurrency, args.log)
    if args.executor == "process":
        poel = PoelExecutor("process", processes=args.processes, log=args.log)
    child_out = args.out.with_suffix(args.out.suffix + ".child")
    name = scratch_name("profile")
    url = create_database(name)
    try:
        poel.install(url)
        with psycopg.connect(url, autocommit=True) as conn:
            poel.insert(conn, args.n, "noop")
            since = poel.mark(conn)
            argv, env = poel.command(url, "noop")
            trace = Path(tempfile.mkstemp(prefix="poel-trace-")[1])
            if args.trace:
                argv = [sys.executable, str(BENCH_DIR / "trace_serve.py"), *argv[1:]]
                env["BENCH_TRACE_FILE"] = str(trace)
            proc = start_process(argv, env, Path("/tmp/poel-profile-serve.log"))
            try:
                wait_for(lambda: poel.done(conn, since) > 0, 60, "the first job", proc)
                time.sleep(0.5)  # past start-up
                pids = {"serve": [proc.pid], "children": children(proc.pid)}
                pids["PostgreSQL backends"] = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                        [name],
                    )
                ]
                done_before, started = poel.done(conn, since), time.monotonic()
                cpu_before = {k: sum(map(cpu_seconds, v)) for k, v in pids.items()}
                busy_before = machine_busy()
                record = ["record", "--duration", str(args.duration)]
                sampling = ["--rate", str(args.rate), "--format", "raw"]
                sampling += ["--gil"]  # only the thread running Python: waits are not CPU
                targets = [(proc.pid, args.out)]
                if pids["children"]:
                    targets.append((pids["children"][0], child_out))
                if args.trace or args.cpu_only:
                    targets = []
                    time.sleep(args.duration)
                spies = [
                    subprocess.Popen(
                        [PY_SPY, *record, "--pid", str(pid), *sampling, "-o", str(out)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for pid, out in targets
                ]
                for spy in spies:
                    if spy.wait():
                        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.args!r}")
                done = poel.done(conn, since) - done_before
                seconds = time.monotonic() - started
                cpu = {k: sum(map(cpu_seconds, v)) - cpu_before[k] for k, v in pids.items()}
                busy_after = machine_busy()
            finally:
                stop_process(proc)
        print(f"serve {poel.config}: {done} jobs done while sampling")
        rate = done / seconds
        print(f"wall time: {1e6 / max(rate, 1e-9):.0f} µs a job ({rate:.0f} jobs/s)")
        for what, used in cpu.items():
            if not pids[what]:
                continue  # no children: a greenlet run
            share = 100 * used / seconds
            count = f", {len(pids[what])} processes" if what != "serve" else ""
            print(
                f"{what}'s CPU time: {1e6 * used / max(done, 1):.0f} µs a job"
                f" ({share:.0f}% of a core{count}{'; sampling included' if targets else ''})"
            )
        busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
        print(f"the machine's CPUs were {100 * busy:.0f}% busy (every process, others' too)")
        print()
        if args.trace:
            print(trace_summary(trace, started, started + seconds, args.processes))
            trace.unlink(missing_ok=True)
            return 0
        trace.unlink(missing_ok=True)
        if args.cpu_only:
            return 0
        print("serve:", aggregate(args.out, args.top))
        if len(targets) > 1:
            print()
            print(f"child {targets[1][0]}:", aggregate(child_out, args.top))
    finally:
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
