"""Every hook a Poel plugin can implement. These docstrings are the reference docs.

A plugin module implements hooks by name with the ``@hookimpl`` marker::

    from poel_host import Job, hookimpl

    @hookimpl
    def register_jobs():
        return [Job(type="process_new_record", schema=NewRecord, handler=process)]

An implementation may take any subset of a hook's arguments, by name. Hooks only ever
gain arguments, so a plugin written today keeps working. An implementation whose name
matches no hook here is a start-up error (no silently dead hooks).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "poel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_jobs() -> list[Any]:  # type: ignore[empty-body]
    """Return the :class:`poel_host.Job` definitions this plugin handles.

    Called once at start-up (and by producers that validate payloads). Job types must be
    unique across all loaded plugins.
    """


@hookspec
def register_migrations() -> list[Any]:  # type: ignore[empty-body]
    """Return this plugin's :class:`poel_host.Migration` objects (versioned SQL).

    ``poel-host migrate`` applies those not yet applied, in version order, in the same
    transaction as the host's (one with ``transaction=False``, or whose SQL has the line
    ``-- poel: no-transaction``, outside any: for ``CREATE INDEX CONCURRENTLY``), and
    records them under the plugin's name. Use it to create the tables your handlers work
    on.
    """


@hookspec
def startup(settings: Any) -> None:
    """The worker is about to start claiming jobs. ``settings`` is the host's Settings."""


@hookspec
def shutdown(settings: Any) -> None:
    """The worker stopped claiming and finished or handed back its jobs."""


@hookspec
def job_started(ctx: Any) -> None:
    """A job is about to run. ``ctx`` is its :class:`poel_host.JobContext`."""


@hookspec
def job_finished(ctx: Any, outcome: str, duration: float, error: str | None) -> None:
    """A job run ended.

    :param outcome: ``succeeded``, ``retry`` (will run again), ``failed`` (dead letter),
        ``released`` (handed back at shutdown), ``snoozed`` (the handler snoozed: queued
        again later, the attempt not counted), ``discarded`` (the handler raised
        ``Discard``: failed at once, no retry) or ``cancelled`` (someone cancelled the job
        while it ran: ``Queue.cancel``).
    :param duration: seconds the handler ran.
    :param error: the error message, for ``retry``, ``failed`` and ``discarded``
        (``discarded: <reason>``).
    """


@hookspec
def process_started(settings: Any) -> None:
    """A child process of the process executor started and loaded this plugin.

    Called once in each child, before its first job: load what every job of a
    ``Job(executor="process")`` type needs and is expensive to make (a model, a
    fingerprint index) into a module-level variable here, and each job in that child uses
    it. Children are started before they are needed and replaced after
    ``POEL_PROCESS_MAX_JOBS`` jobs or past ``POEL_PROCESS_MAX_RSS_MB``, so this runs once
    per child, not once per job. Not called in the serve process itself.
    """
