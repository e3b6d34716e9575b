import os

import pytest
from poel_example_pipeline import audio
from poel_example_pipeline.flow import enqueue_pipeline, pipeline
from poel_example_pipeline.plugin import AudioJob, MergeRecord, fingerprint, merge

from poel_host import InvalidPayload, JobCancelled

SEED = 7


@pytest.fixture(autouse=True)
def one_child(monkeypatch):
    """One child process (the kit's settings read the environment) for the process jobs."""
    monkeypatch.setenv("POEL_PROCESSES", "1")


@pytest.fixture
def song(tmp_path):
    """A WAV file of the demo audio: one tone in each band."""
    path = tmp_path / "song.wav"
    audio.write_wav(path, audio.demo_audio(SEED, seconds=1))
    return path


@pytest.fixture
def record(poel_conn):
    """A record in poel-records' table (migrated by the kit: that plugin is loaded too)."""
    poel_conn.execute("INSERT INTO records (id) VALUES (7)")
    return 7


def metadata(poel_conn, record_id):
    row = poel_conn.execute(
        "SELECT metadata, processed_at FROM records WHERE id = %s", [record_id]
    ).fetchone()
    return row["metadata"], row["processed_at"]


def test_the_same_audio_gives_the_same_fingerprint_other_audio_another():
    first, same, other = (audio.demo_audio(seed, seconds=1) for seed in (SEED, SEED, SEED + 1))

    assert audio.fingerprint(first, audio.RATE) == audio.fingerprint(same, audio.RATE)
    assert (
        audio.fingerprint(other, audio.RATE)["digest"]
        != audio.fingerprint(first, audio.RATE)["digest"]
    )


def test_the_bands_add_up_to_the_audio_each_holding_its_own_tone():
    samples = audio.demo_audio(SEED, seconds=1)

    bands = audio.separate(samples, audio.RATE)

    assert [(band.low, band.high) for band in bands] == audio.bands_of(audio.RATE)
    summed = [sum(parts) for parts in zip(*(band.samples for band in bands), strict=True)]
    assert max(abs(a - b) for a, b in zip(summed, samples, strict=True)) < 1e-9
    for band, tone in zip(bands, audio.demo_tones(SEED), strict=True):
        assert abs(band.peak_hz - tone) < 1
        assert abs(audio.peak_hz(band.samples, audio.RATE) - tone) < 1


def test_the_fingerprint_runs_in_a_child_and_is_the_steps_result(run_job, song):
    result = run_job("pipeline.fingerprint", {"record_id": 7, "audio": str(song)})

    assert result.state == "succeeded"
    assert result.result == audio.fingerprint(*audio.read_wav(song))
    loudest = audio.demo_tones(SEED)[:3]
    assert all(
        abs(hz - tone) < 8 for hz, tone in zip(result.result["peaks_hz"], loudest, strict=True)
    )
    [line] = [entry for entry in result.logs if entry["event"] == "audio fingerprinted"]
    assert line["record_id"] == 7
    assert line["child_pid"] != os.getpid()  # computed in a child process


def test_the_bands_are_written_beside_the_audio_and_listed(run_job, song):
    result = run_job("pipeline.separate_bands", {"record_id": 7, "audio": str(song)})

    assert result.state == "succeeded"
    bands = result.result
    assert [(b["low_hz"], b["high_hz"]) for b in bands] == audio.bands_of(audio.RATE)
    assert [os.path.dirname(b["path"]) for b in bands] == [str(song.with_suffix(".bands"))] * 5
    for band, tone in zip(bands, audio.demo_tones(SEED), strict=True):
        assert abs(band["peak_hz"] - tone) < 1
    summed = [
        sum(parts) for parts in zip(*(audio.read_wav(b["path"])[0] for b in bands), strict=True)
    ]
    assert max(abs(a - b) for a, b in zip(summed, audio.read_wav(song)[0], strict=True)) < 1e-3
    assert [b["rms"] for b in bands] == sorted((b["rms"] for b in bands), reverse=True)


def test_audio_too_short_for_a_frame_is_discarded(run_job, tmp_path):
    blip = tmp_path / "blip.wav"
    audio.write_wav(blip, [0.5] * 100)

    result = run_job("pipeline.fingerprint", {"record_id": 7, "audio": str(blip)})

    assert (result.state, result.outcome) == ("failed", "discarded")
    assert "100 samples, fewer than 1024" in result.error


def test_the_merge_writes_both_results_into_the_record_once(poel_context, poel_conn, record):
    results = {"fingerprint": {"digest": "ab12"}, "bands": [{"path": "/x/a.wav"}]}
    ctx = poel_context.replace(dependencies=results)

    merge(MergeRecord(record_id=record), ctx)
    merged, processed_at = metadata(poel_conn, record)
    merge(MergeRecord(record_id=record), ctx)

    assert merged == results
    assert metadata(poel_conn, record) == (merged, processed_at)  # the second run: no change
    assert ctx.events == [
        "record processed",
        "record merged",
        "record already up to date",
        "record merged",
    ]


def test_a_merge_without_the_steps_results_is_discarded(run_job, poel_conn, record):
    result = run_job("pipeline.merge", {"record_id": record})  # alone, not in a workflow

    assert (result.state, result.outcome) == ("failed", "discarded")
    assert "no result from step(s) ['fingerprint', 'bands']" in result.error
    assert metadata(poel_conn, record) == ({}, None)


def test_the_workflow_is_enqueued_as_drawn(poel_queue, song, record):
    workflow_id = enqueue_pipeline(poel_queue, record, str(song))

    state = poel_queue.workflow(workflow_id)
    assert (state.name, state.state) == ("audio pipeline, record 7", "running")
    assert {s.name: (s.job_type, s.state, set(s.after)) for s in state.steps} == {
        "record": ("process_new_record", "queued", set()),
        "fingerprint": ("pipeline.fingerprint", "waiting", {"record"}),
        "bands": ("pipeline.separate_bands", "waiting", {"record"}),
        "merge": ("pipeline.merge", "waiting", {"fingerprint", "bands"}),
    }


def test_a_bad_payload_refuses_the_whole_workflow(poel_queue, enqueued):
    with pytest.raises(InvalidPayload, match="step 'record'"):
        poel_queue.enqueue_workflow(pipeline(0, "/x/song.wav"))

    assert enqueued() == []


def test_a_cancelled_fingerprint_stops(poel_context, song):
    poel_context.cancel()

    with pytest.raises(JobCancelled):
        fingerprint(AudioJob(record_id=7, audio=str(song)), poel_context)
