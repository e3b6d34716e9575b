"""Reporting handlers that block the gevent hub.

A handler that burns CPU or calls a non-green library stops every other greenlet: claims,
lease renewal, health. A greenlet stamps a heartbeat; a real OS thread (not patched by
gevent) checks it and, when it is older than ``POEL_BLOCKING_WARN_MS``, logs one warning
with the stack of the code holding the hub, so the culprit is named instead of the worker
silently starving, and counts it (``blocks``: ``poel_event_loop_blocks_total`` in
``/metrics``). Leases are not among the starved: their keeper renews them from a thread
of its own (see ``worker/leases.py``). (gevent's own monitor thread renders every
greenlet's locals for its report, which fails on bottle's request locals, so Poel watches
by itself.)
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

import gevent
from gevent import monkey


class HubWatchdog:
    def __init__(self, threshold_s: float, *, log: Any) -> None:
        self.threshold_s = threshold_s
        self.log = log
        self.beat = time.monotonic()
        self.blocks = 0  # blocks seen (each reported once); written by the watching thread
        # Under gevent, threading.get_ident() names the greenlet; frames are keyed by thread.
        self.main_thread = monkey.get_original("_thread", "get_ident")()

    def start(self) -> None:
        gevent.spawn(self._heartbeat)
        start_new_thread = monkey.get_original("_thread", "start_new_thread")
        start_new_thread(self._watch, ())

    def blocks_seen(self) -> int:
        """How many times the event loop was blocked past the threshold."""
        return self.blocks

    def _heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            gevent.sleep(self.threshold_s / 4)

    def _watch(self) -> None:
        sleep = monkey.get_original("time", "sleep")
        reported = False
        while True:
            sleep(self.threshold_s / 4)
            stalled = time.monotonic() - self.beat
            if stalled <= self.threshold_s:
                reported = False
                continue
            if not reported:
                reported = True
                self.blocks += 1
                frame = sys._current_frames().get(self.main_thread)
                stack = "".join(traceback.format_stack(frame)[-6:]) if frame else ""
                self.log.warning(
                    "event loop blocked: a handler is not yielding (CPU work or blocking I/O)",
                    blocked_for_s=round(stalled, 3),
                    stack=stack,
                )
