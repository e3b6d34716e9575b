"""Job types calling ``ctx.supabase`` for poel-host's own tests (tests/test_supabase_client.py):
the plugin ``poel-testsupabase``, one handler on each executor.

Each run logs ``supabase client`` with the client's ``id()``, the pid and the native
thread, so that a test can tell which process and thread made or shared which client.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Literal

from pydantic import BaseModel

from poel_host import Job, JobContext, hookimpl


class Call(BaseModel):
    op: Literal["select", "update", "download", "fingerprint", "nothing"] = "select"
    table: str = "records"
    id: int = 1
    bucket: str = "audio"
    path: str = "uploads/take-1.wav"


def call(payload: Call, ctx: JobContext) -> None:
    if payload.op == "nothing":  # but say whether supabase-py was imported before this job
        ctx.log.info("supabase imported", imported="supabase" in sys.modules, pid=os.getpid())
        return
    client = ctx.supabase
    ctx.log.info(
        "supabase client",
        client=id(client),
        pid=os.getpid(),
        thread=threading.get_native_id(),
    )
    if payload.op == "select":
        rows = client.table(payload.table).select("*").eq("id", payload.id).execute().data
        ctx.log.info("rows read", count=len(rows))
    elif payload.op == "update":
        client.table(payload.table).update({"processed": True}).eq("id", payload.id).execute()
    elif payload.op == "download":
        data = client.storage.from_(payload.bucket).download(payload.path)
        ctx.log.info("file downloaded", size=len(data))
    else:  # the README's example: download, compute, write the result back
        audio = client.storage.from_(payload.bucket).download(payload.path)
        fingerprint = hashlib.sha256(audio).hexdigest()
        client.table(payload.table).update({"fingerprint": fingerprint}).eq(
            "id", payload.id
        ).execute()


@hookimpl
def register_jobs() -> list[Job]:
    once = {"schema": Call, "handler": call, "max_attempts": 1, "timeout": 30}
    return [
        Job(type="test.supabase", **once),  # type: ignore[arg-type]
        Job(type="test.supabase_thread", executor="thread", **once),  # type: ignore[arg-type]
        Job(type="test.supabase_process", executor="process", **once),  # type: ignore[arg-type]
    ]
