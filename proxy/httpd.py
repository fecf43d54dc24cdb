"""A small asyncio HTTP endpoint for /metrics, /healthz and /readyz (no threads in the proxy)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("fasterdata.http")


class MetricsServer:
    """Serves the registry; ``ready`` decides /readyz (503 with a reason when not ready)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], str | None]) -> None:
        self.registry = registry
        self.ready = ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, port)
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].split(b"?")[0].decode("latin-1")
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                problem = self.ready()
                status = "200 OK" if problem is None else "503 Service Unavailable"
                ctype, body = "text/plain", (problem or "ready").encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError,
                ConnectionError):
            pass
        finally:
            writer.close()
