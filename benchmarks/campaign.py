"""The adversarial campaign of issue 16, full size: run by hand, prints JSON.

    python benchmarks/campaign.py --jobs 3000 --serves 3 --restart-postgres-every 60

Needs the poel-testchaos plugin installed in this Python (``serve`` loads it) and
PostgreSQL on ``BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432``).
``--restart-postgres-every`` restarts the whole server (``pg_ctlcluster``): never on a
server other work shares. The run is in ``poel_testchaos.campaign`` and the checks in
``poel_testchaos.verdicts``, shared with the reduced run in ``tests/chaos/test_campaign.py``.
Exit code 1 when any check found a violation.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from poel_testchaos.campaign import Campaign, Options


def main() -> int:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--serves", type=int, default=3)
    p.add_argument("--processes", type=int, default=d.processes)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--lease-ms", type=int, default=d.lease_ms)
    p.add_argument("--terminate-every", type=float, default=d.terminate_every_s)
    p.add_argument("--restart-postgres-every", type=float, default=0.0, help="s; 0 = never")
    p.add_argument("--postgres-cluster", default="15/main", help="VERSION/NAME")
    p.add_argument("--deadline", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--server", default=d.server)
    p.add_argument("--keep-database", action="store_true")
    p.add_argument("--log-dir", type=Path)
    a = p.parse_args()
    version, cluster = a.postgres_cluster.split("/")
    options = Options(
        server=a.server,
        jobs=a.jobs,
        serves=a.serves,
        processes=a.processes,
        threads=a.threads,
        lease_ms=a.lease_ms,
        terminate_every_s=a.terminate_every,
        restart_postgres_every_s=a.restart_postgres_every,
        postgres_cluster=(version, cluster),
        deadline_s=a.deadline,
        seed=a.seed,
        keep_database=a.keep_database,
        log_dir=a.log_dir,
    )
    # SIGTERM (a timeout, a closed terminal) unwinds like Ctrl-C: the run's finally stops
    # its serves, kills its helpers and drops its database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = Campaign(options).run()
    print(json.dumps(report, indent=2, default=str))
    return (
        1 if any(report["counts"][k] for k in report["counts"] if k != "collateral_retries") else 0
    )


if __name__ == "__main__":
    sys.exit(main())
