"""Jobs of the example plugin: ``thumbnails.make`` and its follow-up ``thumbnails.notify``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from poel_host import Job, JobContext, Migration, hookimpl


class MakeThumbnail(BaseModel):
    """Payload of ``thumbnails.make``."""

    model_config = ConfigDict(extra="forbid")  # a misspelled field is an error, not ignored

    image_id: PositiveInt
    width: int = Field(default=128, ge=16, le=2048)
    height: int = Field(default=128, ge=16, le=2048)


class ThumbnailReady(BaseModel):
    """Payload of ``thumbnails.notify``."""

    image_id: PositiveInt
    thumbnail_id: PositiveInt


def make_thumbnail(payload: MakeThumbnail, ctx: JobContext) -> None:
    """Record the thumbnail once, and enqueue the notice in the same transaction."""
    ctx.check_cancelled()
    with ctx.connection() as conn:
        row = conn.execute(
            "INSERT INTO example_thumbnails (image_id, width, height) VALUES (%s, %s, %s)"
            " ON CONFLICT (image_id, width, height) DO NOTHING RETURNING id",
            [payload.image_id, payload.width, payload.height],
        ).fetchone()
        if row is None:
            ctx.log.info("thumbnail exists already", image_id=payload.image_id)
            return
        ctx.enqueue(
            "thumbnails.notify",
            {"image_id": payload.image_id, "thumbnail_id": row["id"]},
            connection=conn,
        )
    ctx.log.info("thumbnail made", image_id=payload.image_id, thumbnail_id=row["id"])


def notify(payload: ThumbnailReady, ctx: JobContext) -> None:
    """Tell whoever cares; here, the log."""
    ctx.log.info("thumbnail ready", image_id=payload.image_id, thumbnail_id=payload.thumbnail_id)


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(type="thumbnails.make", schema=MakeThumbnail, handler=make_thumbnail, timeout=60),
        Job(type="thumbnails.notify", schema=ThumbnailReady, handler=notify, max_attempts=5),
    ]


@hookimpl
def register_migrations() -> list[Migration]:
    return [
        Migration(
            version=1,
            name="thumbnails",
            sql="""
            CREATE TABLE IF NOT EXISTS example_thumbnails (
                id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                image_id   bigint NOT NULL,
                width      integer NOT NULL,
                height     integer NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (image_id, width, height)
            );
            """,
        )
    ]
