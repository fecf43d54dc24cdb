"""Proxy side of ``capture_mode: process``: hand decoded messages to a capture process, cheaply.

Inline capture costs the forwarding process Python per statement (session state machine, event
dicts, metrics, sink encoding). Here the forwarding process keeps only the framing
(needed anyway to catch protocol violations) and a tiny idle tracker for graceful drain, and
appends each chunk's wanted messages to one buffer that is written to the capture process
(``proxy.capworker``) once per millisecond over a socketpair. The worker runs the real
``Session``/``Capture``/``StreamSink`` and sends back a JSON snapshot of its counters twice a second,
which this module turns into the same Prometheus families the inline mode exports.

Wire format between the two (both directions on one socketpair):

- proxy → worker: records ``HDR`` (kind, session number, payload length, µs timestamp) + payload.
  Message payloads are ``MSG`` (type, announced length, kept length) + body, repeated. Control
  payloads (config, open, resume) are JSON.
- worker → proxy: one JSON object per line (snapshots; an ``error`` key when start-up failed).

Traffic never waits for capture: when the worker lags, bytes wait in this process up to
``capture_buffer_max``; past that, chunks are dropped and their statements counted. If the worker
dies it is restarted and told about the open sessions again; what it had not confirmed is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fasterdata.config.settings import ProxySettings

from .capture import BUCKETS_US
from .sink import LATENCY_BUCKETS
from .stats import ProxyStats
from .wire import BACKEND_KEY, EXECUTE, FUNCTION_CALL, QUERY, READY, SYNC, TXN_IDLE, Message, parse_backend_key

log = logging.getLogger("fasterdata.capture")

HDR = struct.Struct("!BIIq")  # kind, session number, payload length, timestamp (µs)
MSG = struct.Struct("!BII")  # message type, announced body length, kept body length
K_CONFIG, K_OPEN, K_RESUME, K_CLOSE, K_CLIENT, K_SERVER = range(6)

_pack_hdr = HDR.pack
_pack_hdr_into = HDR.pack_into
_HDR_SIZE = HDR.size
_BLANK_HDR = bytes(HDR.size)
_pack_msg = MSG.pack
_AWAITED = frozenset((QUERY, SYNC, FUNCTION_CALL))  # answered by ReadyForQuery
# One write per millisecond, not per loop turn: with one turn per statement or two, a send(2) per turn
# would cost the forwarding process more than the rest of its capture work; per millisecond it is
# amortised over dozens of statements.
FLUSH_EVERY = 0.001
SNAPSHOT_TIMEOUT = 30.0
SOCKET_BUFFER = 4 << 20  # first snapshot: worker start-up (imports, spool, Redis) must fit in this


class RemoteSession:
    """Stands in for ``Session`` in the forwarding process (both are a ``proxy.seams.Tap``): ships
    messages, tracks idleness only.

    Idle tracking counts Query/Sync/FunctionCall against ReadyForQuery (the login counts as one
    awaited answer), which is what graceful drain needs; everything else happens in the worker.
    """

    __slots__ = ("_status", "app", "backend_pid", "client", "closed", "database", "link", "n", "outstanding",
                 "params", "sid", "user")

    def __init__(self, link: CaptureLink, n: int, sid: str, client: str, params: dict[str, str]) -> None:
        self.link = link
        self.n = n
        self.sid = sid
        self.client = client
        self.params = params
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        self.app = params.get("application_name", "")
        self.backend_pid = 0
        self.outstanding = 1  # the login, answered by the first ReadyForQuery
        self._status = TXN_IDLE
        self.closed = False

    @property
    def idle(self) -> bool:
        """Nothing in flight and no transaction open: closing now loses no work."""
        return self.outstanding <= 0 and self._status == TXN_IDLE

    @property
    def status(self) -> str:
        return chr(self._status)

    def from_client(self, messages: list[Message], now_us: int) -> None:
        """Client messages (already forwarded): count the awaited answers, append the rest to the buffer."""
        link = self.link
        buf = link.buf
        if (len(buf) + link.backlog > link.limit or link.transport is None) and not link.room():
            link.dropped_stmts += sum(1 for m in messages if m[0] == QUERY or m[0] == EXECUTE)
            self.outstanding += sum(1 for m in messages if m[0] in _AWAITED)
            return
        start = len(buf)
        buf += _BLANK_HDR
        awaited = stmts = 0
        for typ, body, length in messages:
            if typ == QUERY:
                awaited += 1
                stmts += 1
            elif typ == EXECUTE:
                stmts += 1
            elif typ in (SYNC, FUNCTION_CALL):
                awaited += 1
            buf += _pack_msg(typ, length, len(body))
            buf += body
        _pack_hdr_into(buf, start, K_CLIENT, self.n, len(buf) - start - _HDR_SIZE, now_us)
        self.outstanding += awaited
        link.stmts += stmts
        link.records += 1
        if not link.scheduled:
            link.schedule()

    def from_server(self, messages: list[Message], now_us: int) -> None:
        link = self.link
        buf = link.buf
        track = True
        if len(buf) + link.backlog > link.limit or link.transport is None:
            track = link.room()
        start = len(buf)
        if track:
            buf += _BLANK_HDR
        for typ, body, length in messages:
            if typ == READY:
                self.outstanding = self.outstanding - 1 if self.outstanding > 0 else 0
                self._status = body[0] if body else TXN_IDLE
            elif typ == BACKEND_KEY and len(body) >= 4:
                self.backend_pid = parse_backend_key(body)[0]
            if track:
                buf += _pack_msg(typ, length, len(body))
                buf += body
        if track:
            _pack_hdr_into(buf, start, K_SERVER, self.n, len(buf) - start - _HDR_SIZE, now_us)
            link.records += 1
            if not link.scheduled:
                link.schedule()

    def close(self, now_us: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.outstanding = 0
        self.link.closed(self, now_us)

    def open_payload(self, resume: bool) -> bytes:
        doc: dict[str, Any] = {"sid": self.sid, "client": self.client, "params": self.params}
        if resume:
            doc["pid"] = self.backend_pid
        return json.dumps(doc).encode()


class _Pipe(asyncio.Protocol):
    """One incarnation of the socketpair to a worker; a generation number keeps old ones quiet."""

    def __init__(self, link: CaptureLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self._lines = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._lines += data
        end = self._lines.rfind(b"\n")
        if end < 0:
            return
        lines = bytes(self._lines[:end]).split(b"\n")
        del self._lines[: end + 1]
        for line in lines:
            if line:
                try:
                    doc = json.loads(line)
                except ValueError:
                    log.warning("capture worker sent an unreadable line: %.80r", line)
                    continue
                self.link.snapshot(self.generation, doc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self.generation)


class CaptureLink:
    """Starts and feeds one capture worker; restarts it if it dies; serves its metrics here."""

    def __init__(self, settings: ProxySettings, index: int, spool: str, stats: ProxyStats) -> None:
        self.settings = settings
        self.index = index
        self.spool = spool
        self.stats = stats
        self.limit = settings.capture_buffer_max
        self.sessions: dict[int, RemoteSession] = {}
        self._numbers = iter(range(1, 1 << 32))
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipe: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.generation = 0
        self.buf = bytearray()
        self.backlog = 0  # bytes the transport still held after the last flush
        self.scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._first: asyncio.Future[dict[str, Any]] | None = None
        self._restart_delay = 0.2
        # Counts towards the current worker (reset when it is replaced).
        self.records = 0
        self.stmts = 0
        self.snap: dict[str, Any] = {}
        # Totals of the workers that came before (counters must never go backwards).
        self.base: dict[str, Any] = {"sink": {}, "capture": {"statements": {}, "errors": {}, "latency": {}},
                                     "tap_errors": 0}
        self.restarts = 0
        self.dropped_stmts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the worker and wait for its first snapshot; raises RuntimeError if it cannot run."""
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        await self._spawn()
        try:
            doc = await asyncio.wait_for(self._first, SNAPSHOT_TIMEOUT)
        except TimeoutError:
            raise RuntimeError("capture worker did not report within "
                               f"{SNAPSHOT_TIMEOUT:g}s") from None
        if "error" in doc:
            raise RuntimeError(doc["error"])

    async def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A deep kernel buffer absorbs the capture process's lag (it runs niced) without the event loop
        # juggling partial sends; the kernel caps it at net.core.wmem_max.
        with contextlib.suppress(OSError):
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            child.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fasterdata.proxy.capworker", "--fd", str(child.fileno())],
                pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        parent.setblocking(False)
        self.generation += 1
        pipe = _Pipe(self, self.generation)
        await self._loop.create_unix_connection(lambda: pipe, sock=parent)  # type: ignore[union-attr]
        self.pipe = pipe
        self.transport = pipe.transport
        self.backlog = 0
        self.records = self.stmts = 0
        self.snap = {}
        config = {"settings": self.settings.model_dump(mode="json"), "index": self.index, "spool": self.spool}
        self._control(K_CONFIG, 0, json.dumps(config).encode())
        for s in self.sessions.values():
            self._control(K_RESUME, s.n, s.open_payload(True))
        log.info("capture worker pid %d started", self.proc.pid)

    async def close(self, timeout: float = 15.0) -> None:
        """After the sessions ended: let the worker drain, flush its sink and exit (bounded wait)."""
        self.stopping = True
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
                self.transport.write_eof()
        proc = self.proc
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            log.warning("capture worker pid %d did not exit within %gs: killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
        elif proc.returncode:
            log.warning("capture worker exited with status %d", proc.returncode)
        if self.transport is not None:
            self.transport.close()

    # -- the hot path -----------------------------------------------------------------------------

    def session(self, sid: str, client: str, params: dict[str, str]) -> RemoteSession:
        """ProxyServer.session_factory: a new client session, announced to the worker."""
        s = RemoteSession(self, next(self._numbers), sid, client, params)
        self.sessions[s.n] = s
        self._control(K_OPEN, s.n, s.open_payload(False))
        return s

    def room(self) -> bool:
        """Slow path of the bound check: is the worker there, and has it caught up enough?"""
        if self.transport is None:
            return False
        self.backlog = self.transport.get_write_buffer_size()
        return len(self.buf) + self.backlog <= self.limit

    def schedule(self) -> None:
        self.scheduled = True
        self._loop.call_later(FLUSH_EVERY, self.flush)  # type: ignore[union-attr]

    def closed(self, s: RemoteSession, now_us: int) -> None:
        self.sessions.pop(s.n, None)
        self._control(K_CLOSE, s.n, b"", now_us)

    def _control(self, kind: int, n: int, payload: bytes, ts: int = 0) -> None:
        """Control records are small and never dropped (but vanish with a dead worker)."""
        if self.transport is None:
            return
        self.buf += _pack_hdr(kind, n, len(payload), ts)
        self.buf += payload
        self.records += 1
        if not self.scheduled and self._loop is not None:
            self.schedule()

    def flush(self) -> None:
        self.scheduled = False
        if not self.buf or self.transport is None or self.transport.is_closing():
            return
        data = self.buf
        self.buf = bytearray()
        self.transport.write(data)
        self.backlog = self.transport.get_write_buffer_size()

    # -- from the worker --------------------------------------------------------------------------

    def snapshot(self, generation: int, doc: dict[str, Any]) -> None:
        if generation != self.generation:
            return
        if "error" not in doc:
            self.snap = doc
            self._restart_delay = 0.2
            self.stats.tap_errors = self.base["tap_errors"] + doc.get("tap_errors", 0)
        if self._first is not None and not self._first.done():
            self._first.set_result(doc)

    def lost(self, generation: int) -> None:
        """The socketpair closed: at shutdown that is the worker finishing; otherwise it died."""
        if generation != self.generation:
            return
        self.transport = None
        self.buf = bytearray()
        if self._first is not None and not self._first.done():
            self._first.set_result({"error": "capture worker exited during start-up"})
            return
        if self.stopping:
            return
        sink = self.snap.get("sink", {})
        durable = sink.get("sent", 0) + sink.get("spool_events", 0)
        lost = max(0, self.stmts - durable)
        self.dropped_stmts += lost
        self.restarts += 1
        self._fold()
        code = self.proc.poll() if self.proc is not None else None
        log.error("capture worker died (status %s); up to %d statements not captured; restarting in %.1fs",
                  code, lost, self._restart_delay)
        self._loop.call_later(self._restart_delay, self._restart)  # type: ignore[union-attr]
        self._restart_delay = min(self._restart_delay * 2, 5.0)

    def _restart(self) -> None:
        if self.stopping:
            return
        old = self.proc
        if old is not None and old.poll() is None:
            old.kill()
            old.wait()

        async def spawn() -> None:
            try:
                await self._spawn()
            except OSError as exc:
                log.error("cannot restart the capture worker: %s", exc)
                self._loop.call_later(self._restart_delay, self._restart)  # type: ignore[union-attr]
                self._restart_delay = min(self._restart_delay * 2, 5.0)

        self._loop.create_task(spawn())  # type: ignore[union-attr]

    def _fold(self) -> None:
        """Add the dead worker's counters to the base, so exported counters keep growing."""
        snap, base = self.snap, self.base
        base["tap_errors"] += snap.get("tap_errors", 0)
        for k, v in snap.get("sink", {}).items():
            if k in _SINK_COUNTERS:
                base["sink"][k] = base["sink"].get(k, 0) + v
            elif k == "latency_counts":
                old = base["sink"].get(k) or [0] * len(v)
                base["sink"][k] = [a + b for a, b in zip(old, v, strict=True)]
        cap = snap.get("capture", {})
        for name in ("statements", "errors"):
            into = base["capture"][name]
            for k, v in cap.get(name, {}).items():
                into[k] = into.get(k, 0) + v
        lat = base["capture"]["latency"]
        for db, app, series in cap.get("latency", []):
            old = lat.get((db, app)) or [0] * len(series)
            lat[(db, app)] = [a + b for a, b in zip(old, series, strict=True)]
        self.snap = {}

    # -- what /metrics and /readyz read -------------------------------------------------------------

    def readiness(self) -> str | None:
        if self.transport is None:
            return "capture worker not running (restarting)"
        if not self.snap:
            return "capture worker starting"
        return self.snap.get("ready")

    @property
    def pending(self) -> int:
        """Records handed to the current worker that it has not processed yet."""
        if self.transport is None:
            return 0
        return max(0, self.records - self.snap.get("records", 0))


_SINK_COUNTERS = ("sent", "spooled", "replayed", "dropped", "deduplicated", "trimmed_unread", "send_errors", "batches",
                  "latency_sum")


class SinkView:
    """What SinkCollector reads from a StreamSink, rebuilt from the worker's snapshots."""

    def __init__(self, link: CaptureLink) -> None:
        self.link = link

    def _get(self, name: str) -> Any:
        return self.link.snap.get("sink", {}).get(name, 0)

    def __getattr__(self, name: str) -> Any:
        if name in _SINK_COUNTERS:
            return self.link.base["sink"].get(name, 0) + self._get(name)
        raise AttributeError(name)

    @property
    def queued(self) -> int:
        return self._get("queued") + self.link.pending

    @property
    def spool_events(self) -> int:
        return self._get("spool_events")

    @property
    def spool_bytes(self) -> int:
        return self._get("spool_bytes")

    @property
    def connected(self) -> bool:
        return self.link.transport is not None and bool(self._get("connected"))

    def latency(self) -> tuple[list[int], float]:
        """Batch round trips, as StreamSink.latency gives them: this worker's and its predecessors'."""
        n = len(LATENCY_BUCKETS) + 1
        cur = self._get("latency_counts") or [0] * n
        old = self.link.base["sink"].get("latency_counts") or [0] * n
        return ([a + b for a, b in zip(old, cur, strict=True)],
                self.link.base["sink"].get("latency_sum", 0) + self._get("latency_sum"))


class CaptureView:
    """What CaptureCollector reads from a Capture, rebuilt from the worker's snapshots."""

    def __init__(self, link: CaptureLink) -> None:
        self.link = link

    def _merged(self, name: str) -> dict[str, int]:
        out = dict(self.link.base["capture"][name])
        for k, v in self.link.snap.get("capture", {}).get(name, {}).items():
            out[k] = out.get(k, 0) + v
        return out

    @property
    def statements(self) -> dict[str, int]:
        return self._merged("statements")

    @property
    def errors(self) -> dict[str, int]:
        return self._merged("errors")

    @property
    def latency(self) -> dict[tuple[str, str], list[int]]:
        out = {k: list(v) for k, v in self.link.base["capture"]["latency"].items()}
        for db, app, series in self.link.snap.get("capture", {}).get("latency", []):
            old = out.get((db, app)) or [0] * (len(BUCKETS_US) + 2)
            out[(db, app)] = [a + b for a, b in zip(old, series, strict=True)]
        return out


class LinkCollector(Collector):
    """The capture process's own health: up, restarts, statements dropped, bytes waiting for it."""

    def __init__(self, link: CaptureLink) -> None:
        self.link = link

    def collect(self) -> Iterator[Metric]:
        link = self.link
        yield GaugeMetricFamily("fasterdata_capture_worker_up", "1 while the capture process is connected",
                                value=int(link.transport is not None))
        yield CounterMetricFamily("fasterdata_capture_worker_restarts", "Capture processes restarted after dying",
                                  value=link.restarts)
        yield CounterMetricFamily(
            "fasterdata_capture_dropped_statements",
            "Statements (Query/Execute) whose events were lost: buffer over capture_buffer_max, or not yet "
            "confirmed by a capture process that died (an upper bound)", value=link.dropped_stmts)
        yield GaugeMetricFamily("fasterdata_capture_buffer_bytes", "Bytes waiting in the proxy for the capture "
                                "process", value=len(link.buf) + link.backlog)
