"""A child process of the process executor as serve sees it: its pipes, its messages,
why it ended, and stopping it. (The child's own side is :mod:`poel_host.worker.child`.)

Each child leads a process group of its own (``start_new_session``), which holds whatever
its jobs started: helper programs (an external decoder, say) and their own children.
Stopping a child signals that whole group, so that nothing a job started outlives it; the
group is never serve's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent
import gevent.subprocess

from poel_host.worker.child import ERROR_PREFIX

STOP_GRACE_S = 1.0
_LEVELS = {"debug", "info", "warning", "error", "critical"}
_SIGNAL_HINTS = {signal.SIGKILL: " (out of memory?)", signal.SIGSEGV: " (segmentation fault)"}


class ChildDied(Exception):
    """The child's pipe closed: it exited or was killed."""


class ChildProcess:
    """One child: its process, its pipes, and the greenlet forwarding its log lines."""

    def __init__(self, env: dict[str, str], *, log: Any) -> None:
        self.log = log
        self.jobs_done = 0
        self.last_line = ""  # the last line it wrote that is not JSON (its error, if any)
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "poel_host.worker.child"],
            stdin=gevent.subprocess.PIPE,
            stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches serve, which stops us
        )
        self.pid = self.proc.pid
        self._forwarding = gevent.spawn(self._forward_log)

    def _forward_log(self) -> None:
        """Log each line the child writes on stderr (a handler's print, a C library's
        output, a crash's traceback) as the child's output: a field of a line of serve's,
        so a printed line that looks like one of serve's own is never taken for one. The
        child's log events come on its channel instead (see ``receive``)."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line:
                self.last_line = line
                self.log.info("worker process output", pid=self.pid, line=line[:4000])

    @property
    def error_line(self) -> str:
        """Why the child could not start, in its own words (read once it has ended): the
        line it printed last, which is its error, or a traceback's last line."""
        return self.last_line.removeprefix(ERROR_PREFIX).strip()[:1000]

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message, default=str).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:  # a broken pipe: the child is gone
            raise ChildDied(self.cause()) from exc

    def receive(self, progress: Callable[..., None] | None = None) -> dict[str, Any]:
        """The child's next message; the log events it sends first are logged here, and its
        job's progress reports handed to ``progress(job_id, fraction, message)``."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise ChildDied(self.cause())
            message: dict[str, Any] = json.loads(line)
            if "log" in message:
                self._emit(message["log"])
            elif "progress" in message:
                if progress is not None:
                    fraction, text = message["progress"]
                    progress(message.get("id"), fraction, text)
            else:
                return message

    def _emit(self, event: dict[str, Any]) -> None:
        """Log a child's event with serve's logger: same stream, same format, marked with
        the child's pid."""
        level = event.pop("level", "info")
        text = event.pop("event", "")
        event["child_pid"] = self.pid
        method = getattr(self.log, level if level in _LEVELS else "info")
        method(text, **event)

    def cause(self) -> str:
        """Why the child ended, for the job's error."""
        try:
            code = self.proc.wait(timeout=STOP_GRACE_S)
        except gevent.subprocess.TimeoutExpired:
            return "its output closed while it still ran"
        if code < 0:
            name = signal.Signals(-code).name
            return f"killed by {name}{_SIGNAL_HINTS.get(signal.Signals(-code), '')}"
        return f"exited with code {code}"

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM to the child's group, ``grace`` seconds for the child to end, then
        SIGKILL to the group; waits for the child to end. The group is killed even when
        the child had ended by itself (a crash, an exit): its helpers go with it."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(gevent.subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.signal_group(signal.SIGKILL)
        if self.proc.poll() is None:  # not its own group after all: the child alone
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._forwarding.join(timeout=1)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (its pid, as the child leads it).

        Never to serve's own group, nor to pgid 0 or 1 (which would mean everything). Once
        the child has been reaped its pid stays reserved while any member of its group
        lives; a process now holding that pid therefore means the group is gone and the
        number is a stranger's, and nothing is sent.
        """
        pgid = self.pid
        if pgid <= 1 or pgid == os.getpgrp():
            return
        if self.proc.returncode is not None and _pid_in_use(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # nobody left
            os.killpg(pgid, signum)

    def exit(self, grace: float = 5.0) -> None:
        """Let the child finish and exit on its own (recycling), then end its group."""
        with contextlib.suppress(ChildDied):  # gone already: stopped below
            self.send({"exit": True})
        with contextlib.suppress(gevent.subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self.stop()


def _pid_in_use(pid: int) -> bool:
    """Whether a process with this pid exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
