"""A child process of the process executor: runs jobs one at a time for its ``serve``.

Started by :mod:`poel_host.worker.child_pool` as a fresh interpreter
(``python -m poel_host.worker.child``), never as a fork of the running, patched and
connected serve process: no gevent here, no inherited connections or greenlets. It loads
the serve process's plugins (``POEL_CHILD_PLUGINS``), calls their ``process_started`` hook
once (warm state), says ``ready``, then runs each job it is sent in its main thread, with a
``JobContext`` like a greenlet job's: a connection in this process whose
``statement_timeout`` is the job's remaining time, ``enqueue``, the settings, the log
(its events sent to serve, which logs them), cancellation.

The protocol is one JSON object a line: on stdin ``{"job": …}``, ``{"cancel": true}``,
``{"exit": true}``; on the saved stdout ``{"ready": pid}``, ``{"log": event}``, and for
each job ``{"started": id}`` (before any of its code runs: serve charges the job's attempt
for a death only after it) then ``{"done": …}``. Anything a handler prints goes to
stderr instead (fd 1 is pointed there), which serve forwards line by line; fd 0 reads
``/dev/null`` (the protocol's input is a copy of it), so a handler or a helper program
reading stdin takes nothing of it.

No child outlives its serve, nor does anything its jobs started: a reader thread watches
the protocol's input, and at its end (serve exited, even by ``kill -9``) the child kills
its own process group (itself and its helper programs) at once, whatever its handler is
doing. On Linux serve's death also sends the child ``SIGHUP`` (``PR_SET_PDEATHSIG``),
whose handler does the same. (A handler inside native code that holds the GIL delays
both until that call returns.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO, Any

import psycopg

from poel_host import payloads
from poel_host.database import check_alive, connect
from poel_host.errors import InvalidPayload, PoelError, error_text
from poel_host.jobs import JobCancelled, JobContext
from poel_host.logs import configure_logging, forward_logging, get_logger
from poel_host.plugins import Plugins, load_plugins
from poel_host.queue import Queue
from poel_host.results import ResultError, encode_result
from poel_host.settings import Settings, load_settings
from poel_host.snooze_discard import Discard, Snooze, discard_error, seconds_of
from poel_host.store import Store
from poel_host.worker.child_lifetime import die_with_parent, end_group, rss_kb
from poel_host.worker.child_progress import ProgressSender
from poel_host.worker.job_connections import bounded_transaction

PLUGINS_VARIABLE = "POEL_CHILD_PLUGINS"  # JSON [[plugin name, module], ...]
ERROR_PREFIX = "poel-host worker process: error: "  # the line a child that cannot start prints
# Children run below serve's CPU priority, as batch tasks: on a machine whose cores they
# fill, serve's claims, lease renewals and /health still get the CPU at once.
NICENESS = 5


class Connections:
    """``ctx.connection()`` in a child: connections of this process, kept between jobs."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.idle: list[psycopg.Connection[Any]] = []

    @contextmanager
    def borrow(self, deadline: float) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take()
        pooler = self.settings.pooler != "none"
        try:
            with bounded_transaction(self.store, conn, deadline, transaction_pooler=pooler):
                yield conn
        finally:
            if not conn.closed:
                self.idle.append(conn)

    def _take(self) -> psycopg.Connection[Any]:
        while self.idle:
            conn = self.idle.pop()
            try:
                check_alive(conn)
                return conn
            except psycopg.Error:
                conn.close()
        return connect(
            self.settings.dsn,
            name="child",
            pooler=self.settings.pooler,
            autocommit=False,
            connect_timeout=self.settings.connect_timeout_s,
        )

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Channel:
    """The protocol's output: one JSON object a line, from any thread (a handler's own
    threads log too)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str).encode() + b"\n"
        with self._lock:
            self.out.write(line)
            self.out.flush()

    def log(self, event: dict[str, Any]) -> None:
        self.send({"log": event})


class Child:
    def __init__(self, settings: Settings, plugins: Plugins, channel: Channel, log: Any) -> None:
        self.settings = settings
        self.plugins = plugins
        self.send = channel.send
        self.log = log
        self.store = Store(settings.schema_name)
        self.connections = Connections(settings, self.store)
        self.enqueuer = Queue.for_settings(settings, plugins.jobs)
        self.todo: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.cancel = threading.Event()
        self.reports = ProgressSender(self.send)

    def read(self, stream: IO[bytes]) -> None:
        """The reader thread: jobs and cancellations in; the end of stdin ends the process."""
        for line in stream:
            message = json.loads(line)
            if "job" in message:
                self.todo.put(message["job"])
            elif message.get("cancel"):
                self.cancel.set()
            elif message.get("exit"):
                self.todo.put(None)
        end_group()  # serve is gone: never outlive it, even mid-job

    def serve(self) -> None:
        self.send({"ready": os.getpid()})
        while (job := self.todo.get()) is not None:
            self.cancel.clear()
            self.send({"done": self.run(job)})
        self.connections.close()
        self.enqueuer.close()

    def run(self, message: dict[str, Any]) -> dict[str, Any]:
        # Before any of the job's code: a death from here on is the job's (serve charges
        # the attempt); one before it is not.
        self.send({"started": message["id"]})
        job = self.plugins.jobs[message["job_type"]]
        deadline = time.monotonic() + float(message["timeout_s"])
        ctx = JobContext(
            job_id=message["id"],
            job_type=job.type,
            attempt=message["attempt"],
            max_attempts=message["max_attempts"],
            queue=message["queue"],
            enqueued_at=dt.datetime.fromisoformat(message["enqueued_at"]),
            log=self.log.bind(jobId=message["id"], jobType=job.type, attempt=message["attempt"]),
            settings=self.settings,
            snoozes=int(message.get("snoozes") or 0),
            _connection_factory=lambda: self.connections.borrow(deadline),
            _enqueue=self.enqueuer.enqueue,
            _cancel_event=self.cancel,
            _progress=partial(self.reports.note, message["id"]),
        )
        done: dict[str, Any] = {"error": None, "traceback": None, "stopped": False}
        try:
            model = payloads.validate(job, payloads.to_object(job.type, message["payload"]))
            value = job.handler(model, ctx)
            # Encoded in the child, as serve's executor does: its own job fails for it.
            done["result"] = encode_result(value, self.settings.max_result_bytes)
        except ResultError as exc:
            done.update(error=str(exc), final=True)
        except InvalidPayload as exc:
            done.update(error=str(exc), final=True)
        except Snooze as exc:  # sent as data: serve need not know a plugin's subclass
            try:
                done["snooze_s"] = seconds_of(exc)
            except ValueError as bad:
                done.update(error=str(bad))
        except Discard as exc:
            done.update(error=discard_error(exc), discarded=True)
        except JobCancelled as exc:
            if self.cancel.is_set():
                done["stopped"] = True  # stopped because serve asked: a hand-back
            else:
                done.update(error=error_text(exc), traceback=last_traceback())
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it ends the attempt
            done.update(error=error_text(exc), traceback=last_traceback())
        done["progress"] = self.reports.last(message["id"])  # the outcome writes it
        done["rss_kb"] = rss_kb()
        return done


def last_traceback(limit: int = 8000) -> str:
    """The traceback being handled, its last ``limit`` characters (the error history keeps
    one per failed attempt)."""
    return traceback.format_exc()[-limit:]


def _import(plugin: str, module: str) -> tuple[str, Any]:
    """A plugin's module, or a one-line error naming the plugin (what serve reports when
    no child can start)."""
    try:
        return plugin, importlib.import_module(module)
    except Exception as exc:  # whatever its import raises, reported as one line
        raise PoelError(
            f"plugin {plugin!r} failed to import in the worker process: {error_text(exc)}"
        ) from exc


def main() -> int:
    channel = Channel(os.fdopen(os.dup(1), "wb"))  # the protocol's channel
    inbox = os.fdopen(os.dup(0), "rb")  # and its input: fd 0 then reads /dev/null
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # a handler's print() (and a C library's output) goes to stderr,
    if isinstance(sys.stdout, io.TextIOWrapper):  # a line at a time, as it is printed
        sys.stdout.reconfigure(line_buffering=True)
    die_with_parent()
    with contextlib.suppress(OSError, AttributeError):  # not here: at serve's priority
        os.nice(NICENESS)
        # Linux: a CPU-bound batch task, which never preempts a task that just woke up
        # (serve answering /health, the database answering serve).
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        settings = load_settings()
        # Libraries' standard-library logs go to stderr as JSON lines; structlog's events
        # go to serve through the channel, in order with the jobs' outcomes.
        configure_logging(
            environment=settings.env, log_format=settings.log_format, level=settings.log_level
        )
        forward_logging(channel.log, level=settings.log_level)
        modules = json.loads(os.environ.get(PLUGINS_VARIABLE, "[]"))
        plugins = load_plugins([], extra=[_import(name, module) for name, module in modules])
    except (PoelError, ImportError, ValueError) as exc:
        print(f"{ERROR_PREFIX}{error_text(exc)}", file=sys.stderr)
        return 3
    log = get_logger()
    if settings.supabase_url and settings.supabase_service_role_key:
        from poel_host.supabase_client import warm_up  # (it imports httpx)

        warm_up(log)
    for failed in plugins.failed:
        log.error("plugin failed to load in worker process", plugin=failed.name, error=failed.error)
    plugins.call("process_started", log, settings=settings)
    child = Child(settings, plugins, channel, log)
    threading.Thread(target=child.read, args=(inbox,), daemon=True).start()
    child.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
