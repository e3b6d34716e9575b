"""The job path's histograms are plain numbers (no lock per job): their buckets must still
read as Prometheus' cumulative ``le`` buckets."""

from prometheus_client.parser import text_string_to_metric_families

from poel_host.worker.metrics import Metrics, Observed


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative():
    observed = Observed((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 2.0):
        observed.observe(seconds)
    assert observed.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (observed.total, round(observed.sum, 6)) == (4, 2.65)


def test_observed_values_are_exposed_as_histograms_and_counters():
    metrics = Metrics(dict)
    metrics.job_finished("a.b", "succeeded", 0.003)
    metrics.job_finished("a.b", "succeeded", 7.0)
    metrics.claimed("greenlet", 0.002, 25)
    body, _ = metrics.render()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    job = (("job_type", "a.b"), ("outcome", "succeeded"))
    assert samples["poel_jobs_finished_total", job] == 2
    assert samples["poel_job_duration_seconds_count", job] == 2
    assert samples["poel_job_duration_seconds_bucket", (*job[:1], ("le", "0.005"), job[1])] == 1
    assert samples["poel_job_duration_seconds_bucket", (*job[:1], ("le", "+Inf"), job[1])] == 2
    assert samples["poel_jobs_claimed_total", (("executor", "greenlet"),)] == 25
    assert samples["poel_claim_duration_seconds_count", (("executor", "greenlet"),)] == 1
