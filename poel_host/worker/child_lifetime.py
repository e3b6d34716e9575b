"""How a process-executor child ends with its serve, and what it reports of itself: no
child outlives its serve, nor does anything its jobs started (see :mod:`.child`)."""

from __future__ import annotations

import contextlib
import os
import signal

PARENT_GONE_EXIT = 70
PARENT_GONE_SIGNAL = signal.SIGHUP  # a signal the child handles (SIGKILL would orphan helpers)


def rss_kb() -> int:
    """This process's resident memory now, in KiB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def end_group() -> None:
    """Serve is gone: end this process and everything its jobs started, at once.

    Started by serve, the child leads a process group of its own (``start_new_session``),
    and SIGKILL to that group ends it and its helper programs together. Run any other way
    (its group is not its own: a terminal's, serve's) it only exits.
    """
    pid = os.getpid()
    if pid > 1 and os.getpgrp() == pid:
        os.killpg(pid, signal.SIGKILL)
    os._exit(PARENT_GONE_EXIT)


def die_with_parent() -> None:
    """Linux: be sent ``PARENT_GONE_SIGNAL`` when serve dies (belt and braces beside
    stdin's end), handled by ending the process group."""
    signal.signal(PARENT_GONE_SIGNAL, lambda signum, frame: end_group())
    with contextlib.suppress(Exception):  # not Linux, or no libc: stdin's end still works
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, PARENT_GONE_SIGNAL)  # PR_SET_PDEATHSIG
