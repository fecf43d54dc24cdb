"""A tiny byte relay between a real driver and the real PostgreSQL that taps traffic into Sessions.

It runs its own asyncio loop in a thread, so tests can use blocking drivers. Unlike the proxy, it
feeds each chunk to the Session *before* forwarding it: by the time the driver sees a response,
the events it caused have been emitted, so tests need no waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time

from fasterdata.proxy import wire
from fasterdata.proxy.events import CaptureOptions
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED, Session
from tests.kit.polling import wait_until

# The Session implementation the relay builds (conftest's session_class fixture switches it).
SESSION: type = Session


def now_us() -> int:
    return time.time_ns() // 1000


class Relay:
    """Listens on 127.0.0.1:<port>; each client connection gets its upstream and its Session."""

    def __init__(self, upstream: tuple[str, int], options: CaptureOptions | None = None) -> None:
        self.upstream = upstream
        self.options = options
        self.events: list[dict[str, str]] = []
        self.sessions: list[Session] = []
        self.errors: list[BaseException] = []
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-relay", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def wait_closed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` sessions have seen their connection end (close() called)."""
        wait_until(lambda: sum(s.closed for s in self.sessions) >= count, f"{count} sessions to close", timeout,
                   interval=0.01)

    def dsn(self, dbname: str, user: str = "postgres", **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": user, "dbname": dbname,
                 "sslmode": "disable", "gssencmode": "disable", **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        fe = wire.FrontendDecoder(FRONTEND_WANTED)
        be = wire.BackendDecoder(BACKEND_WANTED)
        peer = writer.get_extra_info("peername")
        holder: list[Session] = []

        def tap_client(data: bytes) -> None:
            typed = []
            for msg in fe.feed(data):
                if msg[0] == wire.STARTUP:
                    _version, params = wire.parse_startup(msg[1])
                    session = SESSION(f"relay-{next(self._ids)}", f"{peer[0]}:{peer[1]}", params,
                                      emit=self.events.append, options=self.options)
                    holder.append(session)
                    self.sessions.append(session)
                elif msg[0] >= 0:
                    typed.append(msg)
            if typed and holder:
                holder[0].from_client(typed, now_us())

        def tap_server(data: bytes) -> None:
            msgs = be.feed(data)
            if msgs and holder:
                holder[0].from_server(msgs, now_us())

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, tap) -> None:  # type: ignore[no-untyped-def]
            try:
                while data := await src.read(65536):
                    try:
                        tap(data)
                    except Exception as exc:  # a tap bug must fail the test, not hang it
                        self.errors.append(exc)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, tap_client), pump(up_reader, writer, tap_server))
        except asyncio.CancelledError:
            pass
        finally:
            if holder:
                holder[0].close(now_us())


class RawClient:
    """A minimal blocking protocol client for what drivers never send (row limits, pipelined COPY)."""

    def __init__(self, port: int, dbname: str, user: str = "postgres") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = wire.BackendDecoder("ZECsGI1t")
        self._pending: list[tuple[str, bytes]] = []
        self.sock.sendall(wire.startup_message({"user": user, "database": dbname}))
        self.until_ready()

    def send(self, *parts: bytes) -> None:
        self.sock.sendall(b"".join(parts))

    def read_until(self, types: str) -> list[tuple[str, bytes]]:
        """Messages (of the kinds the decoder keeps) up to and including the first of ``types``."""
        out: list[tuple[str, bytes]] = []
        while True:
            while self._pending:
                msg = self._pending.pop(0)
                out.append(msg)
                if msg[0] in types:
                    return out
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._pending += [(chr(typ), body) for typ, body, _ in self.decoder.feed(data)]

    def until_ready(self) -> list[tuple[str, bytes]]:
        return self.read_until("Z")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(wire.message("X"))
        self.sock.close()


def i32(value: int) -> bytes:
    return struct.pack("!i", value)
