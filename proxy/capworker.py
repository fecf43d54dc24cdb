"""The capture process of ``capture_mode: process``: sessions, metrics and the Redis sink, off the forwarding path.

Started by the proxy (``python -m fasterdata.proxy.capworker --fd N``) with one end of a socketpair; reads the
records ``proxy.captap`` writes (see there for the format), runs a real ``Session`` per client
session, ``Capture`` and ``StreamSink`` exactly as inline mode does, and writes a JSON snapshot of
its counters back every ``SNAPSHOT_EVERY`` seconds. It runs at ``capture_nice`` so that, when the
CPUs are saturated, queries win and capture lags (buffered) instead.

It ignores SIGINT/SIGTERM: the proxy decides when it ends, by closing its side of the socketpair
after the last session ended (or by dying). Then this process drains what it read, flushes or
spools the sink, sends a last snapshot and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from fasterdata.config.settings import ProxySettings

from . import logs
from .captap import HDR, K_CLIENT, K_CLOSE, K_CONFIG, K_OPEN, K_RESUME, K_SERVER, MSG
from .capture import Capture
from .server import capture_options
from .session import Session
from .sink import StreamSink, sink_for, spool_unusable

log = logging.getLogger("fasterdata.capworker")

SNAPSHOT_EVERY = 0.5
_HDR_SIZE = HDR.size
_MSG_SIZE = MSG.size
_unpack_hdr = HDR.unpack_from
_unpack_msg = MSG.unpack_from


class Worker(asyncio.Protocol):
    """Reads records, drives the sessions; the socketpair's protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.config: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.capture: Capture | None = None
        self.sink: StreamSink | None = None
        self.settings: ProxySettings | None = None
        self.sessions: dict[int, Session] = {}
        self.records = 0
        self.tap_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return True  # keep our side open for the last snapshot

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def process(self) -> None:
        """Handle every complete record; before the sink is up only the config record is read."""
        buf = self.buf
        end = len(buf)
        pos = 0
        while end - pos >= _HDR_SIZE:
            kind, n, size, ts = _unpack_hdr(buf, pos)
            stop = pos + _HDR_SIZE + size
            if stop > end:
                break
            if kind == K_CONFIG:
                if not self.config.done():
                    self.config.set_result(json.loads(bytes(buf[pos + _HDR_SIZE : stop])))
            elif self.capture is None:
                break  # wait for the sink
            else:
                self.record(kind, n, ts, bytes(buf[pos + _HDR_SIZE : stop]))
            pos = stop
            self.records += 1
        if pos:
            del buf[:pos]

    def record(self, kind: int, n: int, ts: int, payload: bytes) -> None:
        if kind in (K_CLIENT, K_SERVER):
            session = self.sessions.get(n)
            if session is None:
                return
            messages = []
            p, end = 0, len(payload)
            while p < end:
                typ, length, kept = _unpack_msg(payload, p)
                p += _MSG_SIZE
                messages.append((typ, payload[p : p + kept], length))
                p += kept
            try:
                if kind == K_CLIENT:
                    session.from_client(messages, ts)
                else:
                    session.from_server(messages, ts)
            except Exception:
                log.exception("[%s] statement capture failed; this session goes on without it", session.sid)
                self.tap_errors += 1
                del self.sessions[n]
        elif kind in (K_OPEN, K_RESUME):
            doc = json.loads(payload)
            capture = self.capture
            session = Session(doc["sid"], doc["client"], doc["params"], emit=capture.emit,  # type: ignore[union-attr]
                              options=capture_options(self.settings))  # type: ignore[arg-type]
            if kind == K_RESUME:
                session.resume(int(doc.get("pid") or 0))
            self.sessions[n] = session
        elif kind == K_CLOSE:
            session = self.sessions.pop(n, None)
            if session is not None:
                try:
                    session.close(ts)
                except Exception:
                    log.exception("[%s] statement capture failed at close", session.sid)
                    self.tap_errors += 1

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        s, c = self.sink, self.capture
        assert s is not None and c is not None
        counts, total = s.latency()
        return {
            "ready": s.readiness(), "records": self.records, "tap_errors": self.tap_errors,
            "sessions": len(self.sessions),
            "sink": {"queued": s.queued, "spool_events": s.spool_events, "spool_bytes": s.spool_bytes,
                     "connected": s.connected, "sent": s.sent, "spooled": s.spooled, "replayed": s.replayed,
                     "dropped": s.dropped, "deduplicated": s.deduplicated,
                     "trimmed_unread": s.trimmed_unread, "send_errors": s.send_errors,
                     "batches": s.batches, "latency_counts": counts, "latency_sum": total},
            "capture": {"statements": c.statements, "errors": c.errors,
                        "latency": [[db, app, series] for (db, app), series in c.latency.items()]},
            **extra,
        }

    def send(self, doc: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(json.dumps(doc).encode() + b"\n")


async def serve(fd: int) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    worker = Worker()
    await loop.create_unix_connection(lambda: worker, sock=sock)
    await asyncio.wait([worker.config, worker.eof], return_when=asyncio.FIRST_COMPLETED)
    if not worker.config.done():
        return 0  # the proxy went away before configuring us
    config = worker.config.result()
    try:
        settings = ProxySettings(**config["settings"])
    except ValueError:  # a value that does not survive a JSON round trip (a masked secret): none we use
        settings = ProxySettings.model_construct(**config["settings"])
    worker.settings = settings
    logs.setup(settings.log_level, settings.log_format)
    try:
        os.nice(settings.capture_nice)
    except OSError as exc:
        log.warning("cannot renice the capture process: %s", exc)
    sink = sink_for(settings, config["spool"])
    try:
        await sink.start()
    except OSError as exc:
        worker.send({"error": spool_unusable(config["spool"], exc)})
        return 1
    worker.sink = sink
    worker.capture = Capture(sink.put)
    worker.process()  # records that arrived while the sink was starting
    worker.send(worker.snapshot())
    while not worker.eof.done():
        await asyncio.wait([worker.eof], timeout=SNAPSHOT_EVERY)
        worker.send(worker.snapshot())
    worker.process()
    now_us = time.time_ns() // 1000
    for session in list(worker.sessions.values()):  # the proxy closed them all first; this is a backstop
        session.close(now_us)
    worker.sessions.clear()
    await sink.close(timeout=10.0)
    worker.send(worker.snapshot(final=True))
    if worker.transport is not None:
        worker.transport.close()
    await asyncio.sleep(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fasterdata.proxy.capworker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited socketpair end")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import uvloop

    return uvloop.run(serve(args.fd))


if __name__ == "__main__":
    sys.exit(main())
