"""Why a worker cannot do its work now: what ``/health`` turns into a 503 with the reason.

Two kinds of entries, under one name each (the service or part concerned):

- **reported**: set and cleared by whoever knows (the supervisor while a service is dead
  and restarting; the process pool while children cannot start);
- **checked**: a function asked each time ``/health`` looks, for a state nobody is
  there to report, such as a completer blocked in one statement for a minute.

It is a mapping of name to reason, read by :class:`~poel_host.health.Health`; a check that
raises is itself the reason, so a bug in one never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

from poel_host.errors import error_text


class Problems(MutableMapping[str, str]):
    def __init__(self) -> None:
        self._reported: dict[str, str] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}

    def check(self, name: str, check: Callable[[], str | None]) -> None:
        """Ask ``check()`` each time: a reason, or None when all is well."""
        self._checks[name] = check

    def _current(self) -> dict[str, str]:
        found = dict(self._reported)
        for name, check in self._checks.items():
            try:
                reason = check()
            except Exception as exc:  # noqa: BLE001 - the failing check is the reason
                reason = f"checking it failed: {error_text(exc)}"
            if reason is not None:
                found.setdefault(name, reason)
        return found

    def __getitem__(self, name: str) -> str:
        return self._current()[name]

    def __setitem__(self, name: str, reason: str) -> None:
        self._reported[name] = reason

    def __delitem__(self, name: str) -> None:
        del self._reported[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())
