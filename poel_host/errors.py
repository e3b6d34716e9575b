"""Poel's own exceptions.

Driver and validation errors are translated into these at the module that meets them, so
that the CLI can print one clear line (the exception's message) instead of a traceback.
Each class's docstring is its meaning; the message says what to do.
"""

from __future__ import annotations


def message(exc: BaseException) -> str:
    """The exception's message on one line; empty when it has none or its str() fails."""
    try:
        return " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the error itself
        return ""


def one_line(exc: BaseException) -> str:
    """The message on one line, or the exception's type when it has none: for log fields."""
    return message(exc) or type(exc).__name__


def error_text(exc: BaseException) -> str:
    """``Type: message`` (or just ``Type``): how a job's or a plugin's error is recorded."""
    text = message(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PoelError(Exception):
    """Base class: an error the CLI prints as one message and exits with ``exit_code``."""

    exit_code = 1


class SettingsError(PoelError):
    """One or more settings are missing or invalid."""

    exit_code = 2


class PluginError(PoelError):
    """A plugin could not be loaded or registers something invalid."""

    exit_code = 3


class GreenError(PoelError):
    """psycopg would block the gevent hub: the process was not patched early enough."""

    exit_code = 3


class DatabaseUnavailable(PoelError):
    """PostgreSQL could not be reached or the connection was lost."""

    exit_code = 4


class SchemaOutOfDate(PoelError):
    """The database schema is missing or older than this version of Poel expects."""

    exit_code = 5


class UnknownJobType(PoelError):
    """No installed plugin handles this job type."""


class InvalidPayload(PoelError):
    """The payload does not match the job type's model (or is not a JSON object)."""

    def __init__(self, message: str, *, job_type: str) -> None:
        super().__init__(message)
        self.job_type = job_type


class DuplicateJob(PoelError):
    """A live (queued or running) job with the same type and unique key exists already."""

    def __init__(self, job_type: str, unique_key: str, existing_id: int | None) -> None:
        super().__init__(
            f"a live {job_type!r} job with unique_key {unique_key!r} exists already"
            + (f" (job {existing_id})" if existing_id is not None else "")
            + "; it was not enqueued twice"
        )
        self.job_type = job_type
        self.unique_key = unique_key
        self.existing_id = existing_id


class InvalidName(PoelError):
    """A queue or job type name no job could have (empty, too long, a NUL byte...)."""

    exit_code = 2


class InvalidWorkflow(PoelError):
    """A workflow that cannot be enqueued: a step name used twice, a dependency on a step
    it does not have, a cycle, a waiting step given a run_at. Nothing of it is stored."""

    exit_code = 2


class JobNotFound(PoelError, LookupError):
    """No job has this id (never enqueued, or deleted past its retention)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"job {job_id} does not exist (never enqueued, or deleted past its retention)"
        )
        self.job_id = job_id


class WorkflowNotFound(PoelError, LookupError):
    """No workflow has this id."""

    def __init__(self, workflow_id: int) -> None:
        super().__init__(f"workflow {workflow_id} does not exist")
        self.workflow_id = workflow_id


class WorkflowRefused(PoelError):
    """A workflow cannot be retried as it is: it is running (or some of its steps still
    run), or some of its steps were deleted past their retention. The message says which."""


class JobFailed(PoelError):
    """The job ended without a result: ``failed`` (its attempts used up, or a final error)
    or ``cancelled``. ``errors`` is its error history, one entry an attempt."""

    def __init__(
        self, job_id: int, state: str, last_error: str | None, errors: list[dict[str, object]]
    ) -> None:
        if state == "cancelled":
            text = f"job {job_id} was cancelled"
        else:
            text = f"job {job_id} failed after {len(errors)} error(s)"
        super().__init__(text + (f": {last_error}" if last_error else ""))
        self.job_id = job_id
        self.state = state
        self.last_error = last_error
        self.errors = errors


class ResultTimeout(PoelError, TimeoutError):
    """``Queue.result`` waited its whole timeout and the job had not finished."""

    def __init__(self, job_id: int, state: str, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s: it is {state}")
        self.job_id = job_id
        self.state = state


class InvalidSteering(PoelError):
    """A concurrency limit, rate limit or fair share that cannot be set as given (a weight
    over the concurrency, a rate without a window, per_key for a queue...)."""

    exit_code = 2
