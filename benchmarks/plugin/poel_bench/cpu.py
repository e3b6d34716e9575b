"""The CPU job every system runs in the ``cpu`` benchmark: a calibrated pure-Python loop.

``spin(loops)`` holds the GIL the whole time (no I/O, no C call that releases it), which
is what a CPU-heavy Python handler (a fingerprint, a stem separation in pure Python) does.
``$BENCH_CPU_LOOPS`` is the number of iterations the harness calibrated to about 100 ms;
each job appends the CPU time its loop really took (``time.thread_time()``: this thread's,
so a peer running several jobs on threads of one process is measured per job too) to
``$BENCH_CPU_FILE``, from which the harness computes the ideal wall time. The harness's
``common.spin`` is the same loop: keep the two identical.
"""

from __future__ import annotations

import os
import time


def spin(loops: int) -> int:
    x = 0
    for i in range(loops):
        x = (x * 31 + i) % 1_000_003
    return x


def cpu_job() -> None:
    """Spin ``$BENCH_CPU_LOOPS`` times; append the loop's CPU seconds to ``$BENCH_CPU_FILE``."""
    loops = int(os.environ["BENCH_CPU_LOOPS"])
    start = time.thread_time()
    spin(loops)
    used = time.thread_time() - start
    with open(os.environ["BENCH_CPU_FILE"], "a") as out:  # one short line: O_APPEND is atomic
        out.write(f"{used!r}\n")
