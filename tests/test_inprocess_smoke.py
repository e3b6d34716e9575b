from __future__ import annotations


def test_run_job_succeeds(run_job, poel_conn):
    result = run_job("test.record", {"key": "a"})
    assert result.state == "succeeded"
    runs = poel_conn.execute("SELECT key, attempt FROM poel_test_runs").fetchall()
    assert runs == [{"key": "a", "attempt": 1}]
    assert [e["event"] for e in result.logs] == ["job started", "job succeeded"]
