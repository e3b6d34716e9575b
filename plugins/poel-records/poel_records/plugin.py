"""The ``process_new_record`` job."""

from __future__ import annotations

from pydantic import BaseModel, PositiveInt

from poel_host import Job, JobContext, hookimpl


class NewRecord(BaseModel):
    record_id: PositiveInt
    record_type: str | None = None
    metadata: dict[str, object] | None = None


def process(payload: NewRecord, ctx: JobContext) -> None:
    ctx.log.info("processing record", record_id=payload.record_id)


@hookimpl
def register_jobs() -> list[Job]:
    return [Job(type="process_new_record", schema=NewRecord, handler=process)]
