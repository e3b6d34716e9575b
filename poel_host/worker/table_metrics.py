"""The jobs table as the server sees it, on ``/metrics``: live and dead row versions, the
last vacuum's age, autovacuum's runs and the sizes of the table and its indexes (issue
18: when the queue slows down, whether the server's housekeeping keeps up is the first
question). Read by :class:`~poel_host.worker.depths.QueueDepths` every few seconds with
the queue depths, never on a scrape; a scrape turns the last reading into metric
families here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True)
class JobsTable:
    """The jobs table as the server's statistics see it (``jobs_table_stats`` in the SQL)."""

    live_tuples: int
    dead_tuples: int
    last_vacuum_age_s: float  # NaN: never vacuumed since the statistics were reset
    autovacuums: int
    table_bytes: int
    index_bytes: Mapping[str, int]  # index name -> bytes


def jobs_table_families(table: JobsTable | None) -> Iterator[Metric]:
    """The jobs table's gauges (and autovacuum's counter): without samples until read."""
    gauges = {
        "poel_jobs_table_live_tuples": (
            "Live rows of the jobs table (the server's estimate, n_live_tup).",
            "live_tuples",
        ),
        "poel_jobs_table_dead_tuples": (
            "Dead row versions in the jobs table that no vacuum has removed yet (n_dead_tup).",
            "dead_tuples",
        ),
        "poel_jobs_table_last_vacuum_age_seconds": (
            "Seconds since the jobs table was last vacuumed, by hand or by autovacuum "
            "(NaN if never since the server's statistics were reset).",
            "last_vacuum_age_s",
        ),
        "poel_jobs_table_size_bytes": (
            "Size of the jobs table's heap on disk (without indexes or TOAST).",
            "table_bytes",
        ),
    }
    for name, (text, field) in gauges.items():
        gauge = GaugeMetricFamily(name, text)
        if table is not None:
            gauge.add_metric([], getattr(table, field))
        yield gauge
    autovacuums = CounterMetricFamily(
        "poel_jobs_table_autovacuums",
        "Times autovacuum vacuumed the jobs table (the server's count, autovacuum_count).",
    )
    indexes = GaugeMetricFamily(
        "poel_jobs_index_size_bytes",
        "Size on disk of each index of the jobs table (jobs_ready_idx: the claim's).",
        labels=["index"],
    )
    if table is not None:
        autovacuums.add_metric([], table.autovacuums)
        for index, size in sorted(table.index_bytes.items()):
            indexes.add_metric([index], size)
    yield autovacuums
    yield indexes
