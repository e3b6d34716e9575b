"""A local HTTP server that answers every request after a delay (one second by default).

The I/O benchmark's jobs call it: each job waits on the network the way a real job
waits on an API, without holding a database connection. asyncio serves a thousand
sleeping requests at once in one process, so the server is never the bottleneck.

Run: ``python benchmarks/slowhttp.py PORT [DELAY_S]``.
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


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0))
