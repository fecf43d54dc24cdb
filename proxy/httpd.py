"""A small asyncio HTTP endpoint for /metrics, /healthz and /readyz (no threads in the proxy)."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import ssl
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("fasterdata.http")


class MetricsServer:
    """Serves the registry; ``ready`` decides /readyz (503 with a reason when not ready)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], str | None], user: str | None = None,
                 password: str | None = None, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.registry = registry
        self.ready = ready
        # Metrics reveal statement counts and client addresses: optionally behind basic auth and TLS.
        self._auth = (b"Basic " + base64.b64encode(f"{user}:{password}".encode())) if user and password else None
        self._tls: ssl.SSLContext | None = None
        if tls_cert and tls_key:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls.load_cert_chain(tls_cert, tls_key)
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True, ssl=self._tls,
                                                  ssl_handshake_timeout=10 if self._tls else None)
        port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on %s://%s:%d/metrics%s", "https" if self._tls else "http", host, port,
                 " (basic auth)" if self._auth else "")
        return port

    def _authorized(self, request: bytes) -> bool:
        if self._auth is None:
            return True
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                return hmac.compare_digest(value.strip(), self._auth)
        return False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = request.split(b" ", 2)[1].split(b"?")[0].decode("latin-1")
            extra = ""
            if not self._authorized(request):
                status, ctype, body = "401 Unauthorized", "text/plain", b"unauthorized\n"
                extra = 'WWW-Authenticate: Basic realm="fasterdata", charset="UTF-8"\r\n'
            elif path == "/metrics":
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
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError,
                ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
