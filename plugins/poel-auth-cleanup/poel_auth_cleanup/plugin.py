"""The ``cleanup_auth_tokens`` job: delete expired auth tokens in bounded batches.

Each batch is its own short transaction, so a large backlog never holds locks on many rows
for long, and a cleanup interrupted half-way (shutdown, timeout) keeps what it deleted.
The job runs hourly through the host's scheduler and can also be enqueued by hand.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from poel_auth_cleanup.settings import MAX_BATCH_SIZE, CleanupSettings
from poel_host import Job, JobContext, Migration, hookimpl

SCHEDULE = "0 * * * *"

Duration = Annotated[
    dt.timedelta,
    Field(ge=dt.timedelta(0)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "format": "duration"},
            ],
            "description": "seconds, or an ISO 8601 duration such as PT1H or P7D",
        }
    ),
]


class Cleanup(BaseModel):
    """Overrides for one run; {} uses the defaults.

    older_than: delete only tokens that expired at least this long ago (default 0, every
    expired token). batch_size: rows deleted per transaction (default
    POEL_AUTH_CLEANUP_BATCH_SIZE, 1000).
    """

    model_config = ConfigDict(extra="forbid")

    older_than: Duration = dt.timedelta(0)
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)


def cleanup(payload: Cleanup, ctx: JobContext) -> None:
    """Delete expired tokens batch by batch until a batch comes back short.

    The cutoff is fixed at the start, so the loop ends even while tokens keep expiring;
    between batches the job checks for cancellation (a worker shutting down), and a job
    stopped that way is retried and carries on where it stopped.
    """
    from psycopg.rows import dict_row

    from poel_auth_cleanup.queries import query

    settings = CleanupSettings()
    batch_size = payload.batch_size or settings.batch_size
    delete = query("delete_batch", settings.table_parts, settings.expiry_column)
    with ctx.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(query("cutoff"), {"older_than": payload.older_than}).fetchone()
        assert row is not None
        cutoff: dt.datetime = row["cutoff"]
    removed = batches = 0
    while True:
        ctx.check_cancelled()
        with ctx.connection() as conn:
            deleted = conn.execute(delete, {"cutoff": cutoff, "batch_size": batch_size}).rowcount
        batches += 1
        removed += deleted
        ctx.log.debug("auth token batch deleted", rows=deleted, batch=batches)
        if deleted < batch_size:
            break
    ctx.log.info(
        "expired auth tokens removed",
        rows=removed,
        batches=batches,
        batch_size=batch_size,
        table=settings.table,
        cutoff=cutoff.isoformat(),
    )


@hookimpl
def register_jobs() -> list[Job]:
    # Checking the settings here makes a bad POEL_AUTH_TOKENS_* value a start-up error
    # naming this plugin, rather than a failure of every run.
    CleanupSettings()
    return [Job(type="cleanup_auth_tokens", schema=Cleanup, handler=cleanup, schedule=SCHEDULE)]


@hookimpl
def register_migrations() -> list[Migration]:
    from poel_auth_cleanup.queries import migrations

    return migrations()
