"""The ``cleanup_auth_tokens`` job."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from poel_host import Job, JobContext, hookimpl


class Cleanup(BaseModel):
    model_config = ConfigDict(extra="forbid")


def cleanup(payload: Cleanup, ctx: JobContext) -> None:
    ctx.log.info("cleaning up auth tokens")


@hookimpl
def register_jobs() -> list[Job]:
    return [Job(type="cleanup_auth_tokens", schema=Cleanup, handler=cleanup)]
