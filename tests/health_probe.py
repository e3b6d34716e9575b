"""Probe ``GET /health`` of some ``poel-host serve`` processes from a process of its own.

    python -I -S tests/health_probe.py URL [URL ...]

Probes each URL on a new connection (as a load balancer's health check does) every
``INTERVAL_S`` until SIGTERM, then prints one JSON list of ``[url, status, seconds]``.

Its own process, with the garbage collector off and nothing imported but the standard
library: the latency measured is serve's, not that of a pytest process that holds every
test module in memory and reads serve's logs on threads (its collections and its GIL are
what an earlier in-process probe timed at 102 ms now and then).
"""

from __future__ import annotations

import gc
import http.client
import json
import signal
import sys
import time
import urllib.parse

INTERVAL_S = 0.1


def probe(url: str) -> tuple[int, float]:
    parts = urllib.parse.urlsplit(url)
    started = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0  # no answer within 5 s, or the connection refused
    finally:
        conn.close()
    return status, time.monotonic() - started


def main(urls: list[str]) -> None:
    gc.disable()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    samples: list[tuple[str, int, float]] = []
    while not stopping:
        for url in urls:
            samples.append((url, *probe(url)))
        time.sleep(INTERVAL_S)
    print(json.dumps(samples))


if __name__ == "__main__":
    main(sys.argv[1:])
