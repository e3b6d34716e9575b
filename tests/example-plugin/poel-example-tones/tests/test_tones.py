import os

import pytest
from poel_example_tones.plugin import FingerprintTone, fingerprint_tone

from poel_host import InvalidPayload, JobCancelled


@pytest.fixture(autouse=True)
def one_child(monkeypatch):
    """One child process (the kit's settings read the environment), so that the jobs of
    a test run in the same one."""
    monkeypatch.setenv("POEL_PROCESSES", "1")


def stored(poel_conn, tone_id):
    return poel_conn.execute(
        "SELECT * FROM example_tone_fingerprints WHERE tone_id = %s", [tone_id]
    ).fetchone()


def test_fingerprints_a_tone(run_job, poel_conn):
    result = run_job("tones.fingerprint", {"tone_id": 1, "frequency": 440})

    assert result.state == "succeeded"
    row = stored(poel_conn, 1)
    assert abs(row["peak_hz"] - 440) < 16  # within one frequency bin
    assert row["frames"] == 61  # 2 s of 8 kHz samples, frames of 512 every 256
    assert len(row["fingerprint"]) == 32


def test_its_log_lines_are_the_jobs(run_job):
    result = run_job("tones.fingerprint", {"tone_id": 1, "frequency": 440, "seconds": 0.5})

    [line] = [entry for entry in result.logs if entry["event"] == "tone fingerprinted"]
    assert (line["tone_id"], line["attempt"]) == (1, 1)


def test_the_same_tone_gives_the_same_fingerprint_another_one_differs(run_job, poel_conn):
    for tone_id, frequency in ((1, 440), (2, 440), (3, 660)):
        tone = {"tone_id": tone_id, "frequency": frequency, "seconds": 1}
        assert run_job("tones.fingerprint", tone).state == "succeeded"

    first, same, other = (stored(poel_conn, tone_id) for tone_id in (1, 2, 3))
    assert first["fingerprint"] == same["fingerprint"]
    assert other["fingerprint"] != first["fingerprint"]
    assert abs(other["peak_hz"] - 660) < 16


def test_two_jobs_in_one_child_share_one_making_of_the_tables(run_job, poel_conn):
    for tone_id in (1, 2):
        run_job("tones.fingerprint", {"tone_id": tone_id, "frequency": 1000, "seconds": 0.5})

    first, second = stored(poel_conn, 1), stored(poel_conn, 2)
    assert first["pid"] == second["pid"]
    assert first["tables_build"] == second["tables_build"]


def test_it_runs_in_a_child_warmed_by_process_started(run_job, poel_conn):
    run_job("tones.fingerprint", {"tone_id": 1, "frequency": 1000, "seconds": 0.5})

    row = stored(poel_conn, 1)
    assert row["pid"] != os.getpid()
    assert row["tables_by"] == "process_started"
    assert row["tables_build"].startswith(f"{row['pid']}-")


def test_a_bad_payload_is_refused(poel_queue):
    with pytest.raises(InvalidPayload):
        poel_queue.enqueue("tones.fingerprint", {"tone_id": 1, "frequency": 5000})


def test_a_silent_tone_fails_saying_so(run_job, poel_conn):
    result = run_job(
        "tones.fingerprint", {"tone_id": 4, "frequency": 440, "amplitude": 0}, max_attempts=1
    )

    assert result.state == "failed"
    assert "ValueError: tone 4 is silent" in result.error
    assert stored(poel_conn, 4) is None


def test_the_handler_with_a_context(poel_context, poel_conn):
    fingerprint_tone(FingerprintTone(tone_id=5, frequency=880, seconds=0.5), poel_context)

    assert poel_context.events == ["tone fingerprinted"]
    assert abs(stored(poel_conn, 5)["peak_hz"] - 880) < 16


def test_a_cancelled_job_stops(poel_context, poel_conn):
    poel_context.cancel()

    with pytest.raises(JobCancelled):
        fingerprint_tone(FingerprintTone(tone_id=6, frequency=880), poel_context)
    assert stored(poel_conn, 6) is None
