"""The Python side of the compiled data plane (``data_plane: native``, proxy/_dataplane.c).

Startup, authentication, TLS and CancelRequest stay in ``proxy.server``. When a plain-TCP session's
login is answered (the chunk that ends with the login's ReadyForQuery, with nothing half-read or
unsent on either leg), :meth:`DataPlane.take` hands duplicates of its two sockets to the native loop
and closes the asyncio transports. From then on a native thread forwards and frames the session's bytes
without the GIL; what capture needs arrives here in batches (one ``drain`` for many messages, when the
loop's eventfd becomes readable) and goes to the session's Tap. That Tap is the compiled Session
(proxy/_session.c) when it was built, whose events are the reference Session's by test, and then the loop
feeds it the messages itself (``Loop.deliver``, proxy/_session_api.h), making no Python object for a
message the session does not keep. The ClientProtocol stays the session's home: its counters,
``max_client_conn``, drain at shutdown and ``fail`` work unchanged, writing and closing through
:class:`NativeLeg`.

TLS sessions stay on the Python path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import wire
from .session import BACKEND_WANTED, FRONTEND_WANTED, Session
from .stats import ProxyStats

log = logging.getLogger("fasterdata.proxy")

try:  # absent when the package was built without a C compiler
    from ._dataplane import Loop
    from ._dataplane import frame as native_frame  # the loop's framer alone, for the differential tests
except ImportError:
    Loop = native_frame = None
try:  # the compiled Session (proxy/_session.c), the native plane's capture; proxy.session's is the reference
    from ._session import Session as CompiledSession
except ImportError:
    CompiledSession = None

# Record kinds and session-end reasons, as proxy/_dataplane.c numbers them.
MESSAGES, VIOLATION, END, LOST = range(4)
BAD_LENGTH, TOO_LONG = range(2)
CLIENT_SIDE, SERVER_SIDE = 0, 1

# Drains are at least this far apart (seconds). Timestamps are taken by the loop when bytes are read, so
# waiting changes no event; under load it gathers many statements into one drain instead of waking
# Python for each, and when traffic is sparse the first record is drained at once.
DRAIN_INTERVAL = 0.001


def wanted_table(wanted: str) -> bytes:
    """The 256-byte table the native framer reads: non-zero at the message types kept."""
    types = {ord(c) for c in wanted}
    return bytes(t in types for t in range(256))


_FRONTEND_TABLE = wanted_table(FRONTEND_WANTED)
_BACKEND_TABLE = wanted_table(BACKEND_WANTED)
_NOTHING = bytes(256)


def violation_text(typ: int, length: int, what: int, max_message: int) -> str:
    """The words wire.ProtocolViolation uses for the same framing error."""
    if what == BAD_LENGTH:
        return f"invalid message length {length} for message type {typ:#04x}"
    return f"message of type {typ:#04x} is {length} bytes, over the limit of {max_message}"


def available() -> bool:
    return Loop is not None


class _Detached(asyncio.Protocol):
    """What a handed-off asyncio transport reports its close to: nothing listens any more."""


class NativeLeg:
    """Stands in for one leg's asyncio transport once the native loop owns its socket.

    ``proxy.server`` keeps writing and closing through ``transport``: an error message, Terminate at
    shutdown. Each call becomes a command to the loop, which keeps their order.
    """

    def __init__(self, plane: DataPlane, handle: int, side: int, extra: dict[str, Any]) -> None:
        self._plane = plane
        self._handle = handle
        self._side = side
        self._extra = extra
        self._closing = False

    def write(self, data: bytes) -> None:
        if not self._closing and data:
            self._plane.loop.write(self._handle, self._side, data)

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._plane.loop.close(self._handle)

    abort = close

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        """Backpressure is the loop's own business."""

    def resume_reading(self) -> None:
        """Backpressure is the loop's own business."""

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class DataPlane:
    """One native loop per proxy worker, and the sessions handed to it."""

    def __init__(self, stats: ProxyStats, max_message: int, max_buffer: int) -> None:
        # Every session of this worker is captured by it, TLS ones too: the events are the reference's.
        self.session_class: type = CompiledSession or Session
        self.stats = stats
        self.max_message = max_message  # what a client may send (max_message_size); servers: wire's default
        self.max_buffer = max_buffer
        self.loop: Any = None
        self.sessions: dict[int, Any] = {}  # handle → ClientProtocol
        # handle → its compiled Session, whose messages the loop feeds it without Python objects
        # (Loop.deliver); a session leaves it when it ends, fails or loses its capture, and all do at
        # shutdown, when every message goes the Python way again (which watches for idle sessions).
        self.taps: dict[int, Any] = {}
        self.moved = 0  # sessions handed to the loop
        self.lost = 0  # sessions whose capture stopped because this process fell behind
        self._aio: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._last_drain = 0.0
        self._scheduled: asyncio.TimerHandle | None = None

    def describe(self) -> str:
        """What the "listening on" line says of this data plane."""
        capture = "compiled" if self.session_class is not Session else "in Python (proxy._session not built)"
        return f"native (capture {capture}; TLS sessions: python)"

    def start(self) -> None:
        """Start the native thread and watch its eventfd from the running asyncio loop."""
        self.loop = Loop(self.max_buffer)
        self._fd = self.loop.fileno()
        self._aio = asyncio.get_running_loop()
        self._aio.add_reader(self._fd, self._records_waiting)

    def close(self) -> None:
        """After the server's shutdown: sessions have ended (or were terminated); the thread stops."""
        if self.loop is None:
            return
        if self._scheduled is not None:
            self._scheduled.cancel()
        self.drain()
        if self._aio is not None:
            self._aio.remove_reader(self._fd)
        self.loop.stop()
        for client in list(self.sessions.values()):  # closed by stop(): report them like any end
            self._ended(client)
        self.sessions.clear()
        self.taps.clear()

    # -- the hand-off -------------------------------------------------------------------------

    def take(self, client: Any) -> None:
        """Called with each upstream chunk that ends with ReadyForQuery, until the session moves.

        Sessions with TLS on either leg stay here for good; others move once nothing is half-read,
        unsent or pending on either leg (else the next ReadyForQuery tries again).
        """
        upstream = client.upstream
        if client.negotiation.tls or upstream is None or upstream.tls:
            client.native = None
            client.log.debug("session stays on the Python data plane: TLS")
            return
        if self.loop is None or client.draining:
            return
        ct, ut = client.transport, upstream.transport
        if (ct is None or ut is None or ct.is_closing() or ut.is_closing() or not client.decoder.at_boundary()
                or not upstream.decoder.at_boundary() or upstream.drop_scram_plus
                or ct.get_write_buffer_size() or ut.get_write_buffer_size()):
            return
        csock, usock = ct.get_extra_info("socket"), ut.get_extra_info("socket")
        if csock is None or usock is None:
            client.native = None
            return
        ct.pause_reading()
        ut.pause_reading()
        capture = client.session is not None
        fds: list[int] = []
        try:
            fds.append(os.dup(csock.fileno()))
            fds.append(os.dup(usock.fileno()))
            # The loop may read at once: neither transport reads while paused, and both close below.
            handle = self.loop.add(*fds, _FRONTEND_TABLE if capture else _NOTHING,
                                   _BACKEND_TABLE if capture else _NOTHING, self.max_message,
                                   wire.DEFAULT_MAX_MESSAGE, wire.DEFAULT_KEEP, capture)
        except (OSError, MemoryError) as exc:  # the session stays here
            for fd in fds:
                os.close(fd)
            ct.resume_reading()
            ut.resume_reading()
            client.native = None
            client.log.warning("session stays on the Python data plane: %s", exc)
            return
        extra = {name: ct.get_extra_info(name) for name in ("peername", "sockname")}
        for transport in (ct, ut):
            transport.set_protocol(_Detached())
            transport.close()  # the socket lives on in the dup the loop owns
        client.transport = NativeLeg(self, handle, CLIENT_SIDE, extra)
        upstream.transport = NativeLeg(self, handle, SERVER_SIDE, {})
        client.native = None
        self.sessions[handle] = client
        if capture and type(client.session) is CompiledSession:
            self.taps[handle] = client.session
        self.moved += 1
        client.log.debug("session moved to the native data plane")

    # -- what the loop reports ----------------------------------------------------------------

    def _records_waiting(self) -> None:
        """The eventfd fired. The loop writes it once per drain, so reading it here ends the wake-ups
        until the drain, which runs now or DRAIN_INTERVAL after the previous one."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        if self._scheduled is not None:
            return
        wait = self._last_drain + DRAIN_INTERVAL - time.monotonic()
        if wait <= 0:
            self.drain()
        else:
            self._scheduled = self._aio.call_later(wait, self.drain)  # type: ignore[union-attr]

    def drain(self) -> None:
        """Everything the loop recorded since the last call, in its order, to the sessions' Taps.

        The cyclic collector waits meanwhile. A drain holds a whole batch of records at once, and the
        collections their allocation would trigger traverse and promote every one of them, though none
        can be part of a cycle; profiled, that was a large share of this thread's time (bench/NOTES.md).
        """
        self._scheduled = None
        self._last_drain = time.monotonic()
        if not gc.isenabled():  # paused by whoever runs us: leave it so
            self._deliver()
            return
        gc.disable()
        try:
            self._deliver()
        finally:
            gc.enable()

    def shutting_down(self) -> None:
        """Sessions drain from now on: every record goes through _deliver's loop, which ends each
        draining session as soon as it is idle."""
        self.taps.clear()

    def _deliver(self) -> None:
        if CompiledSession is not None:  # the tapped sessions' messages are fed to them in C
            records, failed, bytes_in, bytes_out, _groups_lost = self.loop.deliver(self.taps)
            for handle, exc in failed:
                client = self.sessions.get(handle)
                if client is not None:
                    client.tap_failed(exc)
                    self.loop.uncapture(handle)
        else:
            records, bytes_in, bytes_out, _groups_lost = self.loop.drain()
        stats = self.stats
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        sessions = self.sessions
        for kind, handle, side, ts, payload in records:
            client = sessions.get(handle)
            if client is None:
                continue
            if kind == MESSAGES:
                session = client.session
                if session is None:
                    continue
                try:
                    if side == CLIENT_SIDE:
                        session.from_client(payload, ts)
                    else:
                        session.from_server(payload, ts)
                except Exception:
                    client.tap_failed()
                    self.loop.uncapture(handle)
                    self.taps.pop(handle, None)
                    continue
                if side == SERVER_SIDE and client.draining and session.idle:
                    client.terminate()
            elif kind == END:
                del sessions[handle]
                self.taps.pop(handle, None)
                self._ended(client)
            elif kind == VIOLATION:
                self._violation(client, side, *payload)
            elif kind == LOST:
                self.lost += 1
                self.taps.pop(handle, None)
                if client.session is not None:
                    client.log.error("statement capture fell behind the native data plane; this session "
                                     "goes on without it")
                    client.server.stats.tap_errors += 1
                    client.session = None

    def _violation(self, client: Any, side: int, typ: int, length: int, what: int) -> None:
        """A framing error on one session: that session alone is told (08P01) and ends."""
        if side == CLIENT_SIDE:
            client.fail(violation_text(typ, length, what, self.max_message))
        else:
            client.upstream_broken(wire.ProtocolViolation(
                violation_text(typ, length, what, wire.DEFAULT_MAX_MESSAGE)))

    @staticmethod
    def _ended(client: Any) -> None:
        client.connection_lost(None)
        if client.upstream is not None:
            client.upstream.connection_lost(None)


class DataPlaneCollector(Collector):
    """The native data plane's share of the proxy's sessions, and what its capture could not keep."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        p = self.plane
        yield GaugeMetricFamily("fasterdata_proxy_native_sessions", "Client sessions the native data plane "
                                "moves now", value=len(p.sessions))
        yield CounterMetricFamily("fasterdata_proxy_native_sessions_moved", "Client sessions handed to the "
                                  "native data plane after their login", value=p.moved)
        yield CounterMetricFamily("fasterdata_proxy_native_capture_lost", "Sessions whose capture stopped "
                                  "because the Python side fell too far behind the native data plane "
                                  "(traffic unaffected)", value=p.lost)


def plane_for(data_plane: str, stats: ProxyStats, max_message: int, max_buffer: int) -> DataPlane | None:
    """The data plane the settings ask for, when it was built; None runs every session in Python."""
    if data_plane != "native":
        return None
    if Loop is None:
        log.warning("data_plane is native, but proxy._dataplane was not built (no C compiler at install?): "
                    "sessions run on the Python path")
        return None
    return DataPlane(stats, max_message, max_buffer)
