"""The job ``tones.fingerprint``: CPU-heavy pure Python, run in a child process of serve."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from poel_example_tones import dsp
from poel_host import Job, JobContext, Migration, hookimpl


class FingerprintTone(BaseModel):
    """Payload of ``tones.fingerprint``."""

    model_config = ConfigDict(extra="forbid")

    tone_id: PositiveInt
    frequency: float = Field(ge=20, le=3900)  # Hz, below half the 8 kHz sample rate
    seconds: float = Field(default=2.0, ge=0.1, le=60)
    amplitude: float = Field(default=0.8, ge=0, le=1)


# Warm state: made once per child process by process_started, used by every job there.
TABLES: dsp.Tables | None = None


@hookimpl
def process_started(settings) -> None:
    global TABLES
    TABLES = dsp.build_tables(by="process_started")


def warm_tables() -> dsp.Tables:
    """The tables process_started made; made here on first use where no child process
    ran that hook (the handler called directly in a test)."""
    global TABLES
    if TABLES is None:
        TABLES = dsp.build_tables(by="first job")
    return TABLES


def fingerprint_tone(payload: FingerprintTone, ctx: JobContext) -> None:
    """Generate the tone, fingerprint it, and store the fingerprint (idempotently)."""
    tables = warm_tables()
    samples = dsp.tone(payload.frequency, payload.seconds, payload.amplitude)
    peaks = dsp.peaks(samples, tables, between_frames=ctx.check_cancelled)
    peak_hz = dsp.dominant_hz(peaks)
    if peak_hz is None:
        raise ValueError(f"tone {payload.tone_id} is silent: nothing to fingerprint")
    with ctx.connection() as conn:
        conn.execute(
            "INSERT INTO example_tone_fingerprints (tone_id, frequency, peak_hz, frames,"
            " fingerprint, pid, tables_build, tables_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tone_id) DO NOTHING",
            [
                payload.tone_id,
                payload.frequency,
                peak_hz,
                len(peaks),
                dsp.fingerprint(peaks),
                os.getpid(),
                tables.build,
                tables.by,
            ],
        )
    ctx.log.info("tone fingerprinted", tone_id=payload.tone_id, peak_hz=peak_hz)


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(
            type="tones.fingerprint",
            schema=FingerprintTone,
            handler=fingerprint_tone,
            executor="process",
            timeout=60,
        )
    ]


@hookimpl
def register_migrations() -> list[Migration]:
    return [
        Migration(
            version=1,
            name="tone_fingerprints",
            sql="""
            CREATE TABLE IF NOT EXISTS example_tone_fingerprints (
                tone_id      bigint PRIMARY KEY,
                frequency    double precision NOT NULL,
                peak_hz      double precision NOT NULL,
                frames       integer NOT NULL,
                fingerprint  text NOT NULL,
                pid          integer NOT NULL,  -- the process that computed it
                tables_build text NOT NULL,     -- the making of the tables it used
                tables_by    text NOT NULL,     -- who made them: process_started, first job
                computed_at  timestamptz NOT NULL DEFAULT now()
            );
            """,
        )
    ]
