"""Poel's host: a PostgreSQL job worker whose handlers come from installed plugins.

Importing this package patches nothing and imports nothing heavy: the public names are
loaded on first use, so a web application can ``from poel_host import Queue`` to enqueue
without being monkey-patched, and the console script can patch before psycopg loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Job": "poel_host.jobs",
    "JobContext": "poel_host.jobs",
    "JobCancelled": "poel_host.jobs",
    "hookimpl": "poel_host.hookspecs",
    "hookspec": "poel_host.hookspecs",
    "Migration": "poel_host.sqlfiles",
    "PackageSql": "poel_host.sqlfiles",
    "Queue": "poel_host.queue",
    "JobRequest": "poel_host.job_requests",
    "Settings": "poel_host.settings",
    "load_settings": "poel_host.settings",
    "PoelError": "poel_host.errors",
    "InvalidPayload": "poel_host.errors",
    "UnknownJobType": "poel_host.errors",
    "DuplicateJob": "poel_host.errors",
    "InvalidName": "poel_host.errors",
    "InvalidSteering": "poel_host.errors",
    "Pause": "poel_host.pauses",
    "JobFailed": "poel_host.errors",
    "JobNotFound": "poel_host.errors",
    "ResultTimeout": "poel_host.errors",
    "Snooze": "poel_host.snooze_discard",
    "Discard": "poel_host.snooze_discard",
    "Workflow": "poel_host.workflows",
    "WorkflowState": "poel_host.workflows",
    "InvalidWorkflow": "poel_host.errors",
    "WorkflowNotFound": "poel_host.errors",
    "WorkflowRefused": "poel_host.errors",
    "WorkflowCancel": "poel_host.workflow_control",
    "WorkflowRetry": "poel_host.workflow_control",
}

__all__ = [
    "Discard",
    "DuplicateJob",
    "InvalidName",
    "InvalidPayload",
    "InvalidSteering",
    "InvalidWorkflow",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobRequest",
    "Migration",
    "PackageSql",
    "Pause",
    "PoelError",
    "Queue",
    "ResultTimeout",
    "Settings",
    "Snooze",
    "UnknownJobType",
    "Workflow",
    "WorkflowCancel",
    "WorkflowNotFound",
    "WorkflowRefused",
    "WorkflowRetry",
    "WorkflowState",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_settings",
]

if TYPE_CHECKING:
    from poel_host.errors import (
        DuplicateJob,
        InvalidName,
        InvalidPayload,
        InvalidSteering,
        InvalidWorkflow,
        JobFailed,
        JobNotFound,
        PoelError,
        ResultTimeout,
        UnknownJobType,
        WorkflowNotFound,
        WorkflowRefused,
    )
    from poel_host.hookspecs import hookimpl, hookspec
    from poel_host.job_requests import JobRequest
    from poel_host.jobs import Job, JobCancelled, JobContext
    from poel_host.pauses import Pause
    from poel_host.queue import Queue
    from poel_host.settings import Settings, load_settings
    from poel_host.snooze_discard import Discard, Snooze
    from poel_host.sqlfiles import Migration, PackageSql
    from poel_host.workflow_control import WorkflowCancel, WorkflowRetry
    from poel_host.workflows import Workflow, WorkflowState


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poel_host' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
