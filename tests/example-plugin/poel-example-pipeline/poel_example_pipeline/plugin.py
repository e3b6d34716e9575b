"""The pipeline's own steps: two process jobs that compute from a record's audio file and
return what they found, and the merge that writes both results into the record.

The workflow tying them to poel-records' ``process_new_record`` is in ``flow.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poel_records.plugin import NewRecord
from poel_records.plugin import process as process_record
from pydantic import BaseModel, ConfigDict, PositiveInt

from poel_example_pipeline import audio
from poel_example_pipeline.flow import BANDS, FINGERPRINT
from poel_host import Discard, Job, JobContext, hookimpl


class AudioJob(BaseModel):
    """Payload of ``pipeline.fingerprint`` and ``pipeline.separate_bands``: the record and
    its audio file (a path every worker can read)."""

    model_config = ConfigDict(extra="forbid")

    record_id: PositiveInt
    audio: str


class MergeRecord(BaseModel):
    """Payload of ``pipeline.merge``: the record to write the results into."""

    model_config = ConfigDict(extra="forbid")

    record_id: PositiveInt


def read_audio(payload: AudioJob) -> tuple[audio.Samples, int]:
    """The samples and rate of the payload's audio file; a file too short to hold one
    fingerprint frame is discarded (a retry would read the same file)."""
    samples, rate = audio.read_wav(payload.audio)
    if len(samples) < audio.FRAME:
        raise Discard(f"{payload.audio}: {len(samples)} samples, fewer than {audio.FRAME}")
    return samples, rate


def fingerprint(payload: AudioJob, ctx: JobContext) -> dict[str, Any]:
    """Fingerprint the audio file; the fingerprint is the step's result."""
    samples, rate = read_audio(payload)
    found = audio.fingerprint(samples, rate, between_frames=ctx.check_cancelled)
    ctx.log.info("audio fingerprinted", record_id=payload.record_id, digest=found["digest"])
    return found


def separate_bands(payload: AudioJob, ctx: JobContext) -> list[dict[str, Any]]:
    """Split the audio file into frequency bands, one WAV file each in a folder beside it
    (``song.wav`` → ``song.bands/``); the step's result lists them (where, which
    frequencies, how loud, the strongest frequency)."""
    source = Path(payload.audio)
    out_dir = source.with_suffix(".bands")
    samples, rate = read_audio(payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    bands = []
    for band in audio.separate(samples, rate, between_bands=ctx.check_cancelled):
        path = out_dir / f"{source.stem}.{band.low:g}-{band.high:g}hz.wav"
        audio.write_wav(path, band.samples, rate)  # a run again overwrites it
        bands.append(
            {
                "low_hz": band.low,
                "high_hz": band.high,
                "path": str(path),
                "rms": round(audio.rms(band.samples), 6),
                "peak_hz": round(band.peak_hz, 1),
            }
        )
    ctx.log.info("audio separated", record_id=payload.record_id, bands=len(bands))
    return bands


def merge(payload: MergeRecord, ctx: JobContext) -> None:
    """Write the fingerprint and the bands the steps before returned into the record's
    metadata, through poel-records (its lock, its merge, its ``processed_at`` stamp): a
    merge run twice leaves the record as the first run left it."""
    results = ctx.dependency_results()
    missing = [step for step in (FINGERPRINT, BANDS) if step not in results]
    if missing:
        # Only outside the pipeline (a merge enqueued alone, or made to run anyway):
        # retrying would not bring the results.
        raise Discard(f"record {payload.record_id}: no result from step(s) {missing} to merge")
    metadata = {"fingerprint": results[FINGERPRINT], "bands": results[BANDS]}
    process_record(NewRecord(record_id=payload.record_id, metadata=metadata), ctx)
    ctx.log.info("record merged", record_id=payload.record_id, bands=len(results[BANDS]))


@hookimpl
def register_jobs() -> list[Job]:
    return [
        Job(
            type="pipeline.fingerprint",
            schema=AudioJob,
            handler=fingerprint,
            executor="process",
            timeout=120,
        ),
        Job(
            type="pipeline.separate_bands",
            schema=AudioJob,
            handler=separate_bands,
            executor="process",
            timeout=120,
        ),
        Job(type="pipeline.merge", schema=MergeRecord, handler=merge),
    ]
