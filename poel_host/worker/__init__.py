"""The ``serve`` runtime: the worker and its services, one module a concern.

Nothing here is public API (plugins reach the host only through ``poel_host``'s names):

| module | holds |
|---|---|
| ``worker.py`` | :class:`Worker`: pools, run/stop/run_once, the drain; starts the services |
| ``attempts.py`` | making a claimed row an attempt: its context, per executor |
| ``drain.py`` | stopping in the order that loses nothing |
| ``run_once.py`` | the test kit's way in: claim, run and record the jobs due now, inline |
| ``readings.py`` | what ``/metrics`` reads off the worker at each scrape |
| ``supervisor.py`` | restarting services that die; the loop of the periodic ones |
| ``problems.py`` | why the worker cannot work now (``/health``'s 503) |
| ``producer.py`` | the lanes (one per executor) and their claim loops |
| ``runners.py`` | the greenlets claimed jobs run on |
| ``slots.py`` | counting every lane's taken slots: claims in flight, jobs not finished |
| ``executor.py`` | running one job and deciding its outcome |
| ``processes.py`` | the process executor's lane: claiming for the children, claiming ahead |
| ``child_pool.py`` | the children: starting, handing out, running a job in one, replacing |
| ``process_readings.py`` | what ``/metrics`` reads off the process executor's children |
| ``children.py`` | a child process as serve sees it: pipes, messages, stopping it |
| ``child.py`` | a child process's side: ``python -m poel_host.worker.child`` |
| ``threads.py`` | the thread executor: a bounded pool of real threads |
| ``job_connections.py`` | lending job-pool connections to handlers |
| ``completer.py`` | writing outcomes in batches; handing jobs back |
| ``held.py`` | the attempts this worker holds, and their one state machine |
| ``leases.py`` | renewing leases, from an OS thread |
| ``registry.py`` | this worker's row in the registry of live workers |
| ``rescuer.py`` | requeueing jobs whose worker died; marking dead workers gone |
| ``promoter.py`` | making future jobs claimable once they are due |
| ``pruner.py`` | deleting finished jobs past their retention |
| ``scheduler.py`` | enqueueing periodic jobs once per slot |
| ``listener.py`` | LISTEN for inserted jobs, or polling alone |
| ``metrics.py`` | counters for ``/metrics`` (``table_metrics.py``: the jobs table's) |
| ``summary.py`` | the periodic "jobs finished" log line |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poel_host.worker.worker import Worker

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    # Lazily: a child process of the process executor imports poel_host.worker.child,
    # which must not load the serve runtime (pools, gevent's WSGI server...) with it.
    if name == "Worker":
        from poel_host.worker.worker import Worker

        return Worker
    raise AttributeError(f"module 'poel_host.worker' has no attribute {name!r}")
