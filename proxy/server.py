"""The listener and the two asyncio protocols of each session: client side and upstream side.

Bytes are written to the other side inside ``data_received``, before anything looks at them;
decoding runs afterwards on the same bytes object, and a failure in it can only end the tap,
never the session. What to answer during startup is decided in ``proxy.startup``; this module
performs it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from fasterdata.config.settings import ProxySettings, split_hostport

from . import dataplane, startup, tls, wire
from .capture import Capture
from .events import CaptureOptions
from .logs import Throttled
from .seams import Tap
from .session import BACKEND_WANTED, FRONTEND_WANTED, Session
from .stats import ProxyStats

log = logging.getLogger("fasterdata.proxy")

# States of a client connection.
STARTUP, CONNECTING, FORWARDING, CLOSED = range(4)

_session_ids = itertools.count(1)


def _now_us() -> int:
    return time.time_ns() // 1000


class SessionLog(logging.LoggerAdapter):
    """Prefixes session lines with the session id (and hands it to the JSON formatter as a field)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**kwargs.get("extra", {}), "sid": self.extra["sid"]}
        return f"[{self.extra['sid']}] {msg}", kwargs


class ClientProtocol(asyncio.Protocol):
    """Client side of one session; owns the upstream connection it opens."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.settings = server.settings
        self.sid = f"{server.sid_prefix}{next(_session_ids)}"
        self.log = SessionLog(log, {"sid": self.sid})
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.state = STARTUP
        self.decoder = wire.FrontendDecoder(FRONTEND_WANTED, self.settings.max_message_size)
        self.negotiation = startup.Negotiation(self.decoder)
        self.session: Tap | None = None
        self.peer = ""
        self._early: list[bytes] = []  # client bytes that arrived while the upstream was connecting
        self._login_timer: asyncio.TimerHandle | None = None
        self._lost = False  # connection_lost has run
        self.draining = False
        self.refused = False  # over max_client_conn: gets 53300 once its StartupMessage arrives
        # data_plane=native: offered the session at each ReadyForQuery until it moves (proxy.dataplane)
        self.native: dataplane.DataPlane | None = server.dataplane

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        stats = self.server.stats
        if isinstance(peer, tuple) and not self.server.client_allowed(peer[0]):
            stats.connections_denied += 1
            self.server.denied_log.warning("denied %s: not in allow_clients", self.peer)
            # Told in answer to its StartupMessage (see proxy.startup); its CancelRequests are dropped.
            self.negotiation.refuse(startup.Fail(f"fasterdata: connections from {peer[0]} are not allowed",
                                                 "28000"), may_cancel=False)
        stats.connections_total += 1
        if len(self.server.clients) - self.server.refusing >= self.settings.max_client_conn:
            stats.connections_refused += 1
            self.server.refused_log.warning("refused %s: max_client_conn (%d) reached", self.peer,
                                            self.settings.max_client_conn)
            # Told in answer to its StartupMessage, as PostgreSQL does; its CancelRequests are still forwarded.
            self.refused = True
            self.server.refusing += 1
            self.negotiation.refuse(startup.Fail(f"too many connections: the fasterdata proxy allows "
                                                 f"{self.settings.max_client_conn}", "53300"))
        self.server.clients.add(self)
        self._login_timer = asyncio.get_running_loop().call_later(
            self.settings.client_login_timeout, self._login_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == FORWARDING:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            self.server.stats.bytes_in += len(data)
            try:
                messages = self.decoder.feed(data)
            except wire.ProtocolViolation as exc:
                self.fail(str(exc))
                return
            if messages and self.session is not None:
                try:
                    self.session.from_client(messages, _now_us())
                except Exception:
                    self.tap_failed()
            return
        if self.state == STARTUP:
            self._startup_data(data)
        elif self.state == CONNECTING:
            self._early.append(data)
            try:
                self.decoder.feed(data)
            except wire.ProtocolViolation as exc:
                self.fail(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # a failed handshake may report the loss twice, see _start_tls
            return
        self._lost = True
        self.state = CLOSED
        self._cancel_login_timer()
        self.server.clients.discard(self)
        if self.refused:
            self.refused = False
            self.server.refusing -= 1
        if self.upstream is not None:
            self.upstream.close()
        if self.session is not None:
            self.session.close(_now_us())
        self.server.session_ended(self)

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # -- startup --------------------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        """Perform what proxy.startup decides for the client's bytes before its session begins."""
        step = self.negotiation.feed(data, self.server.tls_context is not None)
        if step.reply:
            self.transport.write(step.reply)  # type: ignore[union-attr]
        outcome = step.outcome
        if outcome is None:
            return
        if isinstance(outcome, startup.Handshake):
            self.transport.pause_reading()  # type: ignore[union-attr]
            asyncio.get_running_loop().create_task(self._start_tls(outcome.hello))
            return
        self._cancel_login_timer()
        if isinstance(outcome, startup.Start):
            self._begin(outcome)
        elif isinstance(outcome, startup.Cancel):
            self.state = CLOSED
            if outcome.packet is not None:
                # Closed once PostgreSQL has closed its side: clients (libpq, asyncpg) take that close to
                # mean the cancel was processed, and send their next query only then.
                self.server.forward_cancel(outcome.packet, self.transport.close)  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]
        elif isinstance(outcome, startup.Fail):
            self.fail(outcome.message, outcome.sqlstate)
        else:
            self._close_startup(outcome.reason)

    def _begin(self, start: startup.Start) -> None:
        """The StartupMessage arrived: open the session and connect to the upstream."""
        self.session = self.server.open_session(self.sid, self.peer, start.params)
        self.state = CONNECTING
        self._early.append(start.forward)
        negotiation = self.negotiation
        self.log.log(self.server.connection_level, "client %s user=%s database=%s application=%s%s",
                     self.peer, self.session.user, self.session.database, self.session.app or "-",
                     (" (TLS, direct)" if negotiation.direct else " (TLS)") if negotiation.tls else "")
        # The tap sees the typed messages that came with the startup packet, if any.
        if start.typed:
            self.session.from_client(start.typed, _now_us())
        asyncio.get_running_loop().create_task(self._connect_upstream())

    async def _start_tls(self, hello: bytes) -> None:
        """Server-side TLS handshake, once the negotiation has the first record.

        ``hello`` holds the bytes data_received already consumed (the ClientHello). start_tls swaps the
        transport's protocol for its SSL protocol before it first waits, and queues that protocol's
        connection_made (which starts the handshake) and the transport's resume_reading with call_soon.
        _replay_hello, queued just before, therefore runs between the swap and both of them: the saved
        bytes enter the SSL protocol's incoming buffer first and in order, and the
        handshake reads them as if they had just arrived. Nothing of this stays after the handshake.
        """
        loop = asyncio.get_running_loop()
        raw = self.transport
        assert raw is not None
        loop.call_soon(self._replay_hello, raw, hello)
        try:
            transport = await loop.start_tls(raw, self, self.server.tls_context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            if self.state != CLOSED:  # not closed on purpose (login timeout)
                self.log.warning("TLS handshake with %s failed: %s", self.peer, str(exc) or type(exc).__name__)
            raw.abort()
            # A reset during the handshake never reaches this protocol's connection_lost (the SSL
            # layer reports it to start_tls only); without this the session would stay counted.
            self.connection_lost(exc)
            return
        if transport is None:
            return
        if self.state == CLOSED or transport.is_closing():
            # Closed during the handshake without an error (the login timeout closing it): start_tls
            # then returns as if it had succeeded, and nobody else reports the loss.
            self.connection_lost(None)
            return
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        close = self.negotiation.tls_established(
            ssl_object.selected_alpn_protocol() if ssl_object is not None else None)
        if close is not None:
            self._close_startup(close.reason)
            return
        transport.resume_reading()

    def _replay_hello(self, raw: asyncio.Transport, hello: bytes) -> None:
        """Hand the consumed ClientHello to the SSL protocol start_tls installed (see _start_tls)."""
        proto = raw.get_protocol()
        if proto is self or not hasattr(proto, "buffer_updated"):  # uvloop's is not an asyncio subclass
            self.log.error("TLS with %s: the event loop's start_tls did not install a buffered SSL "
                           "protocol (%s); closing", self.peer, type(proto).__name__)
            raw.abort()
            return
        view = memoryview(hello)
        while view:
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    def _close_startup(self, reason: str) -> None:
        """End a connection before its session began, without a PostgreSQL error message (a TLS
        client could not read one): one log line, and the transport closes."""
        self.log.warning("closing connection from %s: %s", self.peer, reason)
        self._cancel_login_timer()
        self.state = CLOSED
        self.transport.close()  # type: ignore[union-attr]

    async def _connect_upstream(self) -> None:
        try:
            self.upstream = await self.server.open_upstream(lambda: UpstreamProtocol(self, self.server.stats))
        except UpstreamError as exc:
            self.log.warning("%s", exc)
            self.fail(str(exc), exc.sqlstate)
            return
        if self.state == CLOSED:
            self.upstream.close()
            return
        self.state = FORWARDING
        # A client on plaintext cannot use channel binding; see proxy.startup.drop_scram_plus.
        self.upstream.drop_scram_plus = self.upstream.tls and not self.negotiation.tls
        self.server.stats.bytes_in += sum(map(len, self._early))
        self.upstream.transport.writelines(self._early)  # type: ignore[union-attr]
        self._early = []
        # A server answers the startup packet at once. A stopped postmaster never does, although the
        # kernel completes the TCP handshake for it, so without this the client would wait forever.
        self.upstream.answer_timer = asyncio.get_running_loop().call_later(
            self.settings.connect_timeout, self._upstream_silent)

    def _upstream_silent(self) -> None:
        """connect_timeout passed with no byte from the upstream since the startup packet went out."""
        if self.upstream is not None:
            self.upstream.answer_timer = None
        self.fail(f"could not connect to upstream {self.server.upstream_where}: no answer to the startup "
                  f"packet within {self.settings.connect_timeout:g}s", "08001")

    # -- ending ---------------------------------------------------------------------------------

    def fail(self, message: str, sqlstate: str = "08P01") -> None:
        """Tell the client why its session ends (as a FATAL ErrorResponse) and close both sides."""
        if self.state == CLOSED or self.transport is None:
            return
        self.log.warning("closing session: %s", message)
        if sqlstate == "08P01":
            self.server.stats.protocol_errors += 1
        self.state = CLOSED
        self.transport.write(wire.error_response(message, sqlstate))
        self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def tap_failed(self, exc: BaseException | None = None) -> None:
        """Capture raised: this session goes on uncaptured. Logs the traceback of ``exc``, or when called
        from the except block, of the exception being handled."""
        self.log.error("statement capture failed; this session goes on without it", exc_info=exc or True)
        self.server.stats.tap_errors += 1
        self.session = None

    def _login_timeout(self) -> None:
        self._login_timer = None
        if self.state == STARTUP and self.negotiation.tls_pending:  # an ErrorResponse would be garbage to TLS
            self._close_startup("timeout: TLS handshake not completed within client_login_timeout")
        elif self.state == STARTUP:
            self.fail("timeout: no startup packet within client_login_timeout", "08006")

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None

    def drain(self) -> None:
        """Shutdown: end the session now if it is idle, else as soon as it next becomes idle."""
        self.draining = True
        if self.state != FORWARDING or self.session is None or self.session.idle:
            self.terminate()

    def terminate(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == FORWARDING and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(wire.message("X"))
        self.fail("terminating connection: the fasterdata proxy is shutting down", "57P01")

    # -- what the upstream leg calls (see ClientLeg) --------------------------------------------

    def upstream_broken(self, exc: wire.ProtocolViolation) -> None:
        """The upstream sent bytes that are not the PostgreSQL protocol: the client is told, both sides close."""
        self.log.error("upstream sent malformed data (%s); ending the session", exc)
        self.fail(f"upstream protocol error: {exc}", "08P01")

    def upstream_closed(self) -> None:
        """The upstream connection ended: so does the client's, once forwarding had begun.

        While CONNECTING, open_upstream reports the failure (a failed TLS handshake closes the upstream
        transport before start_tls raises) and the client must still get that error message.
        """
        if self.state == FORWARDING and self.transport is not None:
            self.state = CLOSED
            self.transport.close()


class ClientLeg(Protocol):
    """What the upstream leg needs of the client leg it serves.

    The per-chunk path reads attributes (where to write, the tap to feed, whether the server drains);
    everything else is a call.
    """

    transport: asyncio.Transport | None
    session: Tap | None
    draining: bool
    native: dataplane.DataPlane | None

    def tap_failed(self, exc: BaseException | None = None) -> None: ...

    def terminate(self) -> None: ...

    def upstream_broken(self, exc: wire.ProtocolViolation) -> None: ...

    def upstream_closed(self) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    """Server side of one session."""

    def __init__(self, client: ClientLeg, stats: ProxyStats) -> None:
        self.client = client
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.BackendDecoder(BACKEND_WANTED)
        self.negotiation: asyncio.Future[bytes] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.tls = False  # this leg is encrypted
        self.drop_scram_plus = False  # until the server's first message has been seen
        self._first = b""
        self.answer_timer: asyncio.TimerHandle | None = None  # until the server's first byte arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.negotiation is not None:
            if not self.negotiation.done():
                self.negotiation.set_result(data)
            return
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None
        if self.drop_scram_plus:
            first = startup.drop_scram_plus(self._first + data)
            if first is None:  # held back until complete
                self._first += data
                return
            self.drop_scram_plus = False
            self._first = b""
            data = first
        client = self.client
        client.transport.write(data)  # type: ignore[union-attr]
        self.stats.bytes_out += len(data)
        try:
            messages = self.decoder.feed(data)
        except wire.ProtocolViolation as exc:
            client.upstream_broken(exc)
            return
        session = client.session
        if messages and session is not None:
            try:
                session.from_server(messages, _now_us())
            except Exception:
                client.tap_failed()
                return
            if client.draining and session.idle:
                client.terminate()
        if client.native is not None and messages and messages[-1][0] == wire.READY:
            client.native.take(client)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.negotiation is not None and not self.negotiation.done():
            self.negotiation.set_exception(ConnectionError("upstream closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None
        self.client.upstream_closed()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def capture_options(settings: ProxySettings) -> CaptureOptions:
    return CaptureOptions(
        sample_rate=settings.sample_rate, max_held=settings.max_held, max_param_bytes=settings.max_param_bytes,
        max_sql_chars=settings.max_sql_chars, capture_params=settings.capture_params, redact=settings.redact,
        redact_columns=settings.redact_columns)


def unix_socket_path(upstream: str) -> str:
    """'' for HOST:PORT; else the socket file (a directory means its .s.PGSQL.5432)."""
    if not upstream.startswith("/"):
        return ""
    return os.path.join(upstream, ".s.PGSQL.5432") if os.path.isdir(upstream) else upstream


class UpstreamError(Exception):
    """The upstream cannot be reached or refused TLS; carries the SQLSTATE the client gets."""

    def __init__(self, message: str, sqlstate: str = "08006") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ProxyServer:
    """Accepts clients, connects each to the upstream, and shuts down gracefully."""

    def __init__(self, settings: ProxySettings, stats: ProxyStats | None = None,
                 capture: Capture | None = None) -> None:
        self.settings = settings
        self.stats = stats or ProxyStats()
        self.capture = capture
        self.capture_options = capture_options(settings)
        self.dataplane = dataplane.plane_for(settings.data_plane, self.stats, settings.max_message_size,
                                             settings.capture_buffer_max)
        self.clients: set[ClientProtocol] = set()
        self.refusing = 0  # of those, clients over max_client_conn waiting to be told so
        self.refused_log = Throttled(log)
        self.denied_log = Throttled(log)
        self.connection_level = logging.INFO if settings.log_connections else logging.DEBUG
        self.host, self.port = split_hostport(settings.listen)
        self.upstream_path = unix_socket_path(settings.upstream)
        self.upstream_host, self.upstream_port = (
            ("", 0) if self.upstream_path else split_hostport(settings.upstream))
        self.upstream_where = self.upstream_path or f"{self.upstream_host}:{self.upstream_port}"
        self.tls_context = (
            tls.server_context(settings.tls_cert, settings.tls_key)
            if settings.tls_cert and settings.tls_key else None
        )
        self.upstream_tls = tls.upstream_context(settings.upstream_sslmode, settings.upstream_sslrootcert)
        self.allow_clients = [ipaddress.ip_network(n, strict=False) for n in settings.allow_clients]
        self.sid_prefix = f"{os.getpid():x}-"
        self._server: asyncio.base_events.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientProtocol(self), self.host, self.port, reuse_address=True, reuse_port=reuse_port,
            backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        self.port = sockname[1]
        if self.dataplane is not None:
            self.dataplane.start()
        log.info("listening on %s:%d, upstream %s (sslmode=%s), framer %s, data plane %s", sockname[0], sockname[1],
                 self.settings.upstream, self.settings.upstream_sslmode,
                 "compiled" if wire._scan is not None else "in Python (proxy._framescan not built: no C compiler?)",
                 self.dataplane.describe() if self.dataplane is not None else "python")

    def client_allowed(self, host: str) -> bool:
        """allow_clients check; an IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d."""
        if not self.allow_clients:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow_clients)

    def reload_tls(self) -> None:
        """SIGHUP: load tls_cert/tls_key again (rotated certificates) for new connections.

        Sessions already encrypted keep theirs; a file that does not load leaves the old context in force.
        """
        cert, key = self.settings.tls_cert, self.settings.tls_key
        if not (cert and key):
            log.info("SIGHUP: no tls_cert/tls_key configured, nothing to reload")
            return
        try:
            context = tls.server_context(cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("SIGHUP: cannot load TLS certificate %s / key %s, keeping the previous one: %s", cert, key, exc)
            return
        self.tls_context = context
        log.info("SIGHUP: TLS certificate %s reloaded", cert)

    def open_session(self, sid: str, peer: str, params: dict[str, str]) -> Tap:
        """The tap of a new client session: a Session that emits into this worker's capture."""
        cls = self.dataplane.session_class if self.dataplane is not None else Session
        return cls(sid, peer, params, emit=self.capture.emit if self.capture else None, options=self.capture_options)

    def session_ended(self, client: ClientProtocol) -> None:
        if not self.clients:
            self._idle.set()

    async def open_upstream(self, factory: Callable[[], UpstreamProtocol]) -> UpstreamProtocol:
        """Connect to the upstream and negotiate TLS as sslmode asks."""
        loop = asyncio.get_running_loop()
        where = self.upstream_where
        connect = (loop.create_unix_connection(factory, self.upstream_path) if self.upstream_path
                   else loop.create_connection(factory, self.upstream_host, self.upstream_port))
        try:
            _transport, proto = await asyncio.wait_for(connect, self.settings.connect_timeout)
        except TimeoutError:
            raise UpstreamError(
                f"could not connect to upstream {where}: timed out after {self.settings.connect_timeout:g}s",
                "08001") from None
        except OSError as exc:
            raise UpstreamError(
                f"could not connect to upstream {where}: {exc.strerror or exc}", "08001") from None
        if self.upstream_tls is not None and not self.upstream_path:  # as libpq: no TLS on Unix sockets
            await self._negotiate_tls(proto, where)
        return proto

    async def _negotiate_tls(self, proto: UpstreamProtocol, where: str) -> None:
        loop = asyncio.get_running_loop()
        proto.negotiation = loop.create_future()
        proto.transport.write(wire.ssl_request())  # type: ignore[union-attr]
        try:
            answer = await asyncio.wait_for(proto.negotiation, self.settings.connect_timeout)
        except TimeoutError:  # a stopped postmaster: the same error as a connect that times out
            proto.close()
            raise UpstreamError(f"could not connect to upstream {where}: no answer to the SSL request within "
                                f"{self.settings.connect_timeout:g}s", "08001") from None
        except ConnectionError as exc:
            proto.close()
            raise UpstreamError(f"upstream {where} did not answer the SSL request: {exc}") from None
        proto.negotiation = None
        if answer[:1] == b"S":
            try:
                transport = await asyncio.wait_for(loop.start_tls(
                    proto.transport, proto, self.upstream_tls,
                    server_hostname=self.settings.upstream_sslservername or self.upstream_host),
                    self.settings.connect_timeout)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                proto.close()
                reason = (f"no handshake within {self.settings.connect_timeout:g}s" if isinstance(exc, TimeoutError)
                          else str(exc) or type(exc).__name__)
                raise UpstreamError(f"TLS to upstream {where} failed: {reason}") from None
            proto.transport = transport
            proto.tls = True
        elif self.settings.upstream_sslmode != "prefer":
            proto.close()
            raise UpstreamError(
                f"upstream {where} does not accept TLS, but upstream_sslmode is "
                f"{self.settings.upstream_sslmode}", "08004")

    def forward_cancel(self, packet: bytes, done: Callable[[], None]) -> None:
        """CancelRequest: the key belongs to the backend, so any proxy process can pass it on. ``done`` runs
        when the upstream has closed the cancel connection (or could not be reached)."""
        self.stats.cancels += 1

        async def send() -> None:
            try:
                proto = await self.open_upstream(lambda: _CancelProtocol(self))
            except UpstreamError as exc:
                log.warning("cancel request not delivered: %s", exc)
                done()
                return
            try:
                proto.transport.write(packet)  # type: ignore[union-attr]
                await asyncio.wait([proto.closed], timeout=self.settings.connect_timeout)
            finally:
                proto.close()
                done()

        asyncio.get_running_loop().create_task(send())

    async def shutdown(self) -> None:
        """Stop accepting; let busy sessions finish up to shutdown_grace seconds, then close the rest."""
        if self._server is not None:
            self._server.close()
        clients = list(self.clients)
        if clients:
            log.info("shutting down: %d sessions open, grace %gs", len(clients), self.settings.shutdown_grace)
        if self.dataplane is not None:
            self.dataplane.shutting_down()
        for client in clients:
            client.drain()
        if self.clients:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace)
            except TimeoutError:
                log.warning("grace period over: closing %d sessions", len(self.clients))
                for client in list(self.clients):
                    client.terminate()
        await asyncio.sleep(0)
        if self.dataplane is not None:
            self.dataplane.close()
        if self._server is not None:
            await self._server.wait_closed()


class _CancelProtocol(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.negotiation: asyncio.Future[bytes] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.negotiation is not None and not self.negotiation.done():
            self.negotiation.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.negotiation is not None and not self.negotiation.done():
            self.negotiation.set_exception(ConnectionError("upstream closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
