"""A process job's progress reports, on their way from the child to ``serve``.

The child runs the handler; ``serve`` holds the job's lease token and writes its progress
(see :mod:`poel_host.worker.progress`). Between them is the child's pipe, one JSON line a
message: reports are kept here and sent a few times a second, whatever the handler's
rate, each naming its job so that serve never takes a late report for the next job's.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class ProgressSender:
    """Process jobs' ``ctx.progress``: only the latest report is kept, and a thread of the
    child sends it to serve every ``SEND_EVERY_S`` when it changed (a handler reporting
    10,000 times a second writes four lines a second to the pipe); the report not sent
    yet when the job ends rides on its ``done`` message instead."""

    SEND_EVERY_S = 0.25

    def __init__(self, send: Any) -> None:
        self.send = send
        self._lock = threading.Lock()  # the handler's threads and the sender's
        self._unsent: tuple[int, float, str | None] | None = None
        self._thread: threading.Thread | None = None

    def note(self, job_id: int, fraction: float, message: str | None) -> None:
        with self._lock:
            self._unsent = (job_id, fraction, message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()

    def last(self, job_id: int) -> list[Any] | None:
        """The job's report not sent yet, taken (None: none)."""
        with self._lock:
            unsent = self._unsent
            if unsent is None or unsent[0] != job_id:
                return None
            self._unsent = None
        return [unsent[1], unsent[2]]

    def _run(self) -> None:
        while True:
            time.sleep(self.SEND_EVERY_S)
            # Sent under the lock: a report taken here reaches the pipe before the job's
            # ``done`` (which ``last()`` waits for), so it is never read as the next job's.
            with self._lock:
                unsent, self._unsent = self._unsent, None
                if unsent is not None:
                    job_id, fraction, message = unsent
                    self.send({"progress": [fraction, message], "id": job_id})
