"""A local HTTP server that answers every request after a delay (one second by default).

The I/O benchmark's jobs call it: each job waits on the network the way a real job
waits on an API, without holding a database connection. asyncio serves a thousand
sleeping requests at once in one process, so the server is never the bottleneck.

Run: ``python benchmarks/slowhttp.py PORT [DELAY_S]``.

``python benchmarks/slowhttp.py floor URL N`` measures the floor of the I/O benchmark on
this machine: N concurrent GETs from a bare gevent process with http.client (what Poel's
``bench.http`` handler does), no queue at all; it prints the seconds they took.
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def serve(port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delay)
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def floor(url: str, n: int) -> float:
    """Seconds for ``n`` concurrent GETs of ``url`` from greenlets (patched first)."""
    from gevent import monkey

    monkey.patch_all()
    import http.client
    import time
    import urllib.parse

    import gevent

    parts = urllib.parse.urlsplit(url)

    def get() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            conn.request("GET", parts.path or "/")
            conn.getresponse().read()
        finally:
            conn.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(get) for _ in range(n)], raise_error=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1] == "floor":
        print(f"{floor(sys.argv[2], int(sys.argv[3])):.3f}")
    else:
        asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0))
