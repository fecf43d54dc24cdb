"""The one HTTP endpoint of every process kind: /metrics, /healthz and /readyz.

It is asyncio. The proxy runs it in its own event loop, so the proxy has no threads for it; the
analyzer and `gl serve|follow`, whose loops are synchronous, run it on a loop of its own thread
(`MetricsThread`). Either way the same code answers, and basic auth and TLS apply alike: metrics
reveal statement counts, client addresses and business figures.

Other pages (the console) are added as `routes`: a path, or a prefix ending in "/", mapped to a function
from a `Request` to a `Reply`. They sit behind the same auth and TLS, and run on a worker thread, since
they may block on Redis while the loop keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from fasterdata.config.common import split_hostport

log = logging.getLogger("fasterdata.http")

Probe = Callable[[], str | None]  # None: fine; else the reason, served with a 503


def _fine() -> str | None:
    return None


@dataclass(frozen=True)
class Request:
    """What a route is asked: the path, the query (last value of each name wins) and the headers (lower-case)."""

    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """What a route answers; `headers` are extra header lines, each ending in CRLF."""

    body: bytes
    ctype: str = "application/json"
    status: str = "200 OK"
    headers: str = ""


Route = Callable[[Request], Reply]


def parse_request(head: bytes) -> Request:
    """The request line's path and query, and the header fields, of one request head."""
    lines = head.decode("latin-1").split("\r\n")
    target = lines[0].split(" ", 2)[1]
    path, _, query = target.partition("?")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(urllib.parse.unquote(path), dict(urllib.parse.parse_qsl(query)), headers)


class EndpointError(Exception):
    """The endpoint cannot start: the message says what (an unreadable certificate, an address in use)."""


class Access(Protocol):
    """The settings that guard the endpoint (config.common.Served)."""

    metrics: str
    metrics_user: str | None
    metrics_password: str | None
    metrics_tls_cert: str | None
    metrics_tls_key: str | None


class MetricsServer:
    """Serves the registry; ``health`` decides /healthz and ``ready`` /readyz (503 with the reason)."""

    def __init__(self, registry: CollectorRegistry, ready: Probe = _fine, user: str | None = None,
                 password: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 health: Probe = _fine, routes: Mapping[str, Route] | None = None) -> None:
        self.registry = registry
        self.routes = dict(routes or {})
        self.ready = ready
        self.health = health
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

    def _answer(self, request: bytes) -> tuple[str, str, bytes, str]:
        """(status, content type, body, extra headers) for one request."""
        path = request.split(b" ", 2)[1].split(b"?")[0].decode("latin-1")
        if not self._authorized(request):
            return ("401 Unauthorized", "text/plain", b"unauthorized\n",
                    'WWW-Authenticate: Basic realm="fasterdata", charset="UTF-8"\r\n')
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry), ""
        if path in ("/healthz", "/readyz"):
            problem = self.health() if path == "/healthz" else self.ready()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            fine = "ok" if path == "/healthz" else "ready"
            return status, "text/plain", (problem or fine).encode() + b"\n", ""
        return "404 Not Found", "text/plain", b"not found\n", ""

    def route_for(self, path: str) -> Route | None:
        """The route serving `path`: an exact one, else the longest prefix ending in "/"."""
        if path in ("/metrics", "/healthz", "/readyz"):
            return None
        if path in self.routes:
            return self.routes[path]
        prefixes = [p for p in self.routes if p.endswith("/") and path.startswith(p)]
        return self.routes[max(prefixes, key=len)] if prefixes else None

    async def _respond(self, head: bytes) -> tuple[str, str, bytes, str]:
        """A route's reply (on a worker thread), or the endpoint's own answer."""
        request = parse_request(head)
        route = self.route_for(request.path)
        if route is None or not self._authorized(head):
            return self._answer(head)
        try:
            reply = await asyncio.to_thread(route, request)
        except Exception:
            log.exception("%s failed", request.path)
            return "500 Internal Server Error", "text/plain", b"internal error (see the log)\n", ""
        return reply.status, reply.ctype, reply.body, reply.headers

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, ctype, body, extra = await self._respond(request) if self.routes else self._answer(request)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError,
                ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def server_for(settings: Access, registry: CollectorRegistry, ready: Probe = _fine,
               health: Probe = _fine, routes: Mapping[str, Route] | None = None) -> MetricsServer:
    """The endpoint as the settings guard it; EndpointError when the certificate does not load."""
    try:
        return MetricsServer(registry, ready, user=settings.metrics_user, password=settings.metrics_password,
                             tls_cert=settings.metrics_tls_cert, tls_key=settings.metrics_tls_key, health=health,
                             routes=routes)
    except (OSError, ssl.SSLError) as exc:
        raise EndpointError(f"cannot load the metrics certificate {settings.metrics_tls_cert}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None


class MetricsThread:
    """A MetricsServer on an event loop of its own daemon thread, for a process whose loop is synchronous.

    A scrape runs the collectors on that thread; they read what the main loop counts under its locks.
    """

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics", daemon=True)

    def start(self, host: str, port: int) -> int:
        """Listen and serve; the port bound. OSError (address in use …) as start_server raises it."""
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self.server.start(host, port), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout=10)
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def serve_in_thread(settings: Access, registry: CollectorRegistry, ready: Probe = _fine,
                    health: Probe = _fine) -> MetricsThread | None:
    """Serve `settings.metrics` ('' : nothing) on a thread; EndpointError, one line, when it cannot."""
    if not settings.metrics:
        return None
    endpoint = MetricsThread(server_for(settings, registry, ready, health))
    try:
        endpoint.start(*split_hostport(settings.metrics))
    except OSError as exc:
        raise EndpointError(f"cannot serve metrics on {settings.metrics}: {exc.strerror or exc}") from None
    return endpoint
