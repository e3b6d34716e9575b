"""Running jobs' progress (``ctx.progress``), written about once a second per worker.

A handler may report progress as often as it likes (10,000 times a second costs a dict
assignment each): :class:`ProgressBoard` keeps only the latest ``(fraction, message)`` of
each attempt, and :class:`ProgressWriter`, a service, writes whatever changed since its
last pass in one statement a second (``write_progress``: token-matched, a HOT update of
columns in no index). A worker whose jobs never report progress writes nothing.

The board is shared by every executor: greenlets and thread handlers note on it directly
(guarded by a native lock, held for a dict operation: a thread never touches a gevent
object, and the event loop never waits on a thread for longer than that), and a process
child's reports arrive over its pipe and are noted by the greenlet waiting for it. When an
attempt ends, the executor takes its unwritten progress off the board and the outcome
writes it (``finish_jobs``), so the last report before a return is never lost to the
race with the outcome, and costs no statement of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent import monkey

from poel_host.errors import DatabaseUnavailable, error_text
from poel_host.store import ProgressRow, Store
from poel_host.worker.supervisor import Periodic

_native_lock: Any = monkey.get_original("_thread", "allocate_lock")

INTERVAL_S = 1.0  # at most one progress statement a second per worker


class ProgressBoard:
    """The latest unwritten progress of each attempt: job id -> (token, fraction, message)."""

    def __init__(self) -> None:
        self._lock = _native_lock()
        self._pending: dict[int, tuple[str, float, str | None]] = {}
        # What the writer is writing now: an attempt that ends meanwhile takes its report
        # from here too, since the writer's statement may come after its outcome's (whose
        # token it then no longer matches) and write nothing.
        self._writing: dict[int, tuple[str, float, str | None]] = {}
        # Told of every report (the test kit's run_job records them); None in a worker.
        self.watch: Callable[[int, float, str | None], None] | None = None

    def note(self, job_id: int, token: str, fraction: float, message: str | None) -> None:
        """Keep ``(fraction, message)`` as the attempt's latest (from any thread)."""
        with self._lock:
            self._pending[job_id] = (token, fraction, message)
        if self.watch is not None:
            self.watch(job_id, fraction, message)

    def take(self, job_id: int, token: str) -> tuple[float, str | None] | None:
        """The attempt's unwritten progress, taken off the board (its outcome writes it).
        A job that never reported progress costs a dict lookup, without the lock."""
        if job_id not in self._pending and job_id not in self._writing:
            return None
        with self._lock:
            pending = self._pending.pop(job_id, None) or self._writing.get(job_id)
        if pending is None or pending[0] != token:
            return None
        return pending[1], pending[2]

    def swap(self) -> list[ProgressRow]:
        """Everything on the board, which is left empty, for the writer (who calls
        ``written()`` once its statement is done)."""
        if not self._pending:
            return []
        with self._lock:
            self._writing, self._pending = self._pending, {}
            return [(job_id, t, f, m) for job_id, (t, f, m) in self._writing.items()]

    def written(self) -> None:
        """The writer's statement is done (or failed): what it held is forgotten."""
        with self._lock:
            self._writing = {}

    def restore(self, rows: list[ProgressRow]) -> None:
        """Put back rows that could not be written, unless a newer report came since."""
        with self._lock:
            for job_id, token, fraction, message in rows:
                self._pending.setdefault(job_id, (token, fraction, message))

    def __len__(self) -> int:
        return len(self._pending)


class ProgressWriter(Periodic):
    """Writes the board every ``interval`` seconds, in one statement."""

    name = "progress"
    failed = "writing job progress failed"

    def __init__(
        self, store: Store, board: ProgressBoard, *, log: Any, interval: float = INTERVAL_S
    ) -> None:
        super().__init__()
        self.store = store
        self.board = board
        self.log = log
        self.interval = interval
        self.retry_max_s = interval
        self.written = 0  # progress rows written (a lost attempt's are not)

    def step(self) -> float:
        self.write()
        return self.interval

    def write(self) -> int:
        """Write what the board holds; the rows written. An outage puts the rows back
        (unless a newer report came meanwhile); any other failure drops them, logged: one
        job's progress can never stop the others' outcomes, which another statement
        writes, nor the next second's progress."""
        rows = self.board.swap()
        if not rows:
            return 0
        try:
            written = len(self.store.write_progress(rows))
        except DatabaseUnavailable:
            self.board.restore(rows)
            raise  # logged by Periodic, tried again
        except Exception as exc:  # noqa: BLE001 - progress is advisory: dropped, said so
            self.log.error(
                "writing job progress failed; this pass's reports are dropped",
                jobs=[r[0] for r in rows],
                error=error_text(exc),
            )
            return 0
        finally:
            self.board.written()
        self.written += written
        return written
