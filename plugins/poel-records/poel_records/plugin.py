"""The ``process_new_record`` job: merge a payload's metadata into a record, stamp it.

The record may have been inserted by the same transaction that enqueued the job; if that
transaction is not visible yet, the job raises so that the worker retries it later, and
after the last attempt fails with a message naming the record.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, PositiveInt

from poel_host import Job, JobContext, Migration, hookimpl
from poel_records.settings import RecordsSettings


class NewRecord(BaseModel):
    """The payload: which record, and what to merge into it."""

    record_id: PositiveInt
    record_type: str | None = None
    metadata: dict[str, Any] | None = None


class RecordNotFound(Exception):
    """The record is not (yet) in the table; raising it makes the worker retry the job."""


def process(payload: NewRecord, ctx: JobContext) -> None:
    """Lock the record, merge the metadata, set the type, stamp ``processed_at``.

    One transaction: the lock and the update commit together, or not at all. A job run
    twice with the same payload changes nothing the second time (see ``apply`` in
    ``sql/queries.sql``).
    """
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb

    from poel_records.queries import query

    settings = RecordsSettings()
    table = settings.table_parts
    with ctx.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        found = cur.execute(query("lock_record", table), {"id": payload.record_id}).fetchone()
        if found is None:
            raise RecordNotFound(missing_message(payload.record_id, settings.table, ctx))
        changed = cur.execute(
            query("apply", table),
            {
                "id": payload.record_id,
                "metadata": Jsonb(payload.metadata or {}),
                "record_type": payload.record_type,
            },
        ).fetchone()
    if changed is None:
        ctx.log.info("record already up to date", record_id=payload.record_id)
    else:
        ctx.log.info(
            "record processed",
            record_id=payload.record_id,
            record_type=changed["record_type"],
            metadata_keys=sorted(changed["metadata"]),
        )


def missing_message(record_id: int, table: str, ctx: JobContext) -> str:
    """Why the job did not run; on the last attempt, that it gives up (naming the record)."""
    if ctx.attempt >= ctx.max_attempts:
        return (
            f"record {record_id} does not exist in {table} "
            f"(looked for it on each of {ctx.max_attempts} attempts); giving up"
        )
    return (
        f"record {record_id} not found in {table} (attempt {ctx.attempt} of "
        f"{ctx.max_attempts}); retrying, as the transaction that inserts it may not have "
        "committed yet"
    )


@hookimpl
def register_jobs() -> list[Job]:
    # Checking the settings here makes a bad POEL_RECORDS_TABLE a start-up error naming
    # this plugin, rather than a failure of every job.
    RecordsSettings()
    return [Job(type="process_new_record", schema=NewRecord, handler=process)]


@hookimpl
def register_migrations() -> list[Migration]:
    from poel_records.queries import migrations

    return migrations()
