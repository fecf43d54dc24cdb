#!/usr/bin/env python3
"""The floor under any proxy built on uvloop: bytes in, the same bytes out, nothing looked at.

A reference path for `run.py`, not a product. Each client connection gets one upstream connection;
`data_received` on either side writes the chunk to the other side and does nothing else (no framing, no
capture, no metrics). Whatever the fasterdata proxy costs above this row is ours to cut; what this row
costs against PgBouncer is the price of Python and uvloop themselves.

    .venv/bin/python bench/proxy/forwarder.py --listen 127.0.0.1:6499 --upstream 127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

import uvloop


class Leg(asyncio.Protocol):
    """One side of a forwarded connection; `peer` is the transport its bytes go to."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        # Client bytes that arrive before the upstream connection is up: pause_reading() in connection_made
        # does not stop uvloop from delivering what it already read (a simpler version without this list
        # failed every pgbench run).
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


class ClientLeg(Leg):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            up_transport, up = await loop.create_connection(Leg, *self.upstream)
        except OSError:
            self.transport.close()
            return
        up.peer = self.transport
        self.peer = up_transport
        for chunk in self.early:
            up_transport.write(chunk)
        self.early.clear()
        self.transport.resume_reading()


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientLeg(upstream), *listen, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:6499", help="HOST:PORT to accept clients on [127.0.0.1:6499]")
    p.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL HOST:PORT [127.0.0.1:5432]")
    args = p.parse_args()
    uvloop.run(serve(split_hostport(args.listen), split_hostport(args.upstream)))


if __name__ == "__main__":
    main()
