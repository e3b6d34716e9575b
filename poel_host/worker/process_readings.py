"""What ``/metrics`` reads off the process executor at each scrape: its children's gauges
and the counts of what happened to them (kept by :class:`~.child_pool.Children`). Only
metric names and help texts, no behaviour: kept out of the pool as the worker's own are
kept in ``readings.py``.
"""

from __future__ import annotations

from poel_host.worker.child_pool import PROBLEM, Children


def gauges(children: Children) -> dict[str, tuple[str, int]]:
    busy, idle = len(children.busy), int(children.idle.qsize())
    return {
        "poel_processes_busy": ("Worker processes running a job.", busy),
        "poel_processes_idle": ("Worker processes ready for a job.", idle),
        "poel_processes": ("POEL_PROCESSES.", children.size),
        "poel_processes_start_failing": (
            "1 while worker processes keep failing to start (see /health).",
            int(PROBLEM in children.problems),
        ),
    }


def counters(children: Children) -> dict[str, tuple[str, int]]:
    counts = children.counts
    return {
        "poel_processes_started_total": ("Worker processes started.", counts["started"]),
        "poel_processes_start_failures_total": (
            "Worker processes that failed to start.",
            counts["start_failures"],
        ),
        "poel_processes_recycled_total": (
            "Worker processes replaced after POEL_PROCESS_MAX_JOBS or past "
            "POEL_PROCESS_MAX_RSS_MB.",
            counts["recycled"],
        ),
        "poel_processes_crashed_total": (
            "Worker processes that died during a job.",
            counts["crashed"],
        ),
        "poel_processes_lost_before_start_total": (
            "Worker processes that died before starting the job they were given; the "
            "job went to another, its attempt not counted.",
            counts["lost_before_start"],
        ),
        "poel_processes_timed_out_total": (
            "Worker processes stopped because their job ran past its timeout.",
            counts["timed_out"],
        ),
        "poel_processes_handed_back_total": (
            "Jobs claimed ahead for a busy worker process that none took in time; "
            "handed back to the queue.",
            counts["handed_back"],
        ),
    }
