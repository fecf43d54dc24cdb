"""One stream's lane: its memory queue, spool, sequence numbers, connection and sender task.

``put()`` only appends to the lane's list and reads nothing but the lane's own attributes: the hot path.
The sender takes what piled up since its last round trip as one batch.  The order of events is kept by
two sequence numbers: ``_qseq`` numbers the first event in memory, ``_pseq`` the next event put while
the spool holds newer events than memory (``_spooling``).  The rest of the lane's state is grouped:
``counts`` (metrics), ``health`` (up or down, and the warnings already given), ``route`` (connections
and the cluster node) and ``backoff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from typing import TYPE_CHECKING, Any

import hiredis

from fasterdata.proxy.streamkeys import key_slot, marker_base

from .cluster import ASKING
from .encoding import encode_batch
from .metrics import LaneCounts
from .resp import RedisConnection, RedisReplyError, RedisTarget, describe
from .script import SCRIPT_SHA
from .spool import Spool, SpoolRead, SpoolWriteError

if TYPE_CHECKING:
    from .streamsink import StreamSink

log = logging.getLogger("fasterdata.sink")

# A batch whose command grows past this is split (Redis refuses a bulk string over 512 MB by default).
MAX_BATCH_BYTES = 32 << 20
# MOVED/ASK redirections followed at once, before the lane backs off like for an unreachable Redis.
MAX_HOPS = 5

_CONNECT_ERRORS = (OSError, TimeoutError, RedisReplyError, ConnectionError, ssl.SSLError, EOFError)
_SEND_ERRORS = (ConnectionError, OSError, TimeoutError, RedisReplyError, EOFError)


class _Batch:
    __slots__ = ("data", "events", "marker", "seq0", "spool")

    def __init__(self, marker: str, seq0: int, events: list[dict[str, str]], spool: SpoolRead | None) -> None:
        self.marker = marker
        self.seq0 = seq0
        self.events = events
        self.spool = spool
        self.data = b""


class Backoff:
    """The delay before the next try after a failure: doubling from ``first`` up to ``most``."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(delay * 2, self.most)
        return delay


class LaneHealth:
    """Whether Redis takes the lane's batches (since when not, and why), and the warnings already given:
    each is logged once until the condition ends."""

    __slots__ = ("down_reason", "down_since", "queue_full_logged", "spool_full_logged", "trim_logged", "up")

    def __init__(self) -> None:
        self.up = False
        self.down_since: float | None = None  # monotonic time the lane went down (None: up, or never connected)
        self.down_reason = ""
        self.queue_full_logged = False
        self.spool_full_logged = False
        self.trim_logged = 0.0  # monotonic time of the last trimmed-unread warning


class Route:
    """Where the lane's batches go: its connection, the cluster node serving its slot (None: the seed),
    a connection to the node an ASK pointed to, and the redirections followed since the last confirmed
    batch or pause (a cluster in flux must not spin)."""

    __slots__ = ("ask_conn", "conn", "hops", "node")

    def __init__(self) -> None:
        self.conn: RedisConnection | None = None
        self.node: RedisTarget | None = None
        self.ask_conn: RedisConnection | None = None
        self.hops = 0

    def drop(self) -> None:
        """Close the connections (a closed one is never reused, so replies cannot get out of step)."""
        for conn in (self.conn, self.ask_conn):
            if conn is not None:
                conn.close()
        self.conn = self.ask_conn = None


class Lane:
    """One stream: its queue, spool, sequence numbers, connection and sender task."""

    def __init__(self, sink: StreamSink, stream: str, tag: str, spool_path: str | os.PathLike | None) -> None:
        self.sink = sink
        self.stream = stream
        self._marker_base = marker_base(sink.prefix, stream, tag)
        self.marker = self._marker_base + sink.instance
        self.slot = key_slot(stream)
        self.spool = Spool(spool_path, sink.spool_max_bytes) if spool_path is not None else None
        # the order: memory, then the spool
        self._max_queue = sink.max_queue
        self._queue: list[dict[str, str]] = []
        self._qseq = 0  # sequence number of _queue[0]
        self._pseq = 0  # sequence number of the next event put while spooling
        self._spooling = False  # new events go to the spool (it holds older ones, or Redis is away)
        self._spilling = False  # the sender is moving the queue into the spool
        self._head: _Batch | None = None  # the batch being sent, kept until Redis confirms it
        self._flush_scheduled = False
        # the sender task and its wake-ups
        self._idle = False  # the sender waits for put() to wake it
        self._wakeup: asyncio.Future | None = None
        self._sent_at = 0.0  # perf_counter() when the last batch went out
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.counts = LaneCounts()
        self.health = LaneHealth()
        self.route = Route()
        self.backoff = Backoff(sink.backoff_min, sink.backoff_max)

    # -- hot path ---------------------------------------------------------------------------------

    def put(self, fields: dict[str, str], route: str = "") -> None:
        """Queue one event (kept by reference: do not change it afterwards); never blocks or awaits."""
        if self._spooling:
            self._spool_put(fields)
            return
        q = self._queue
        if len(q) >= self._max_queue:
            self._overflow(fields)
            return
        q.append(fields)
        if self._idle:
            self._wake()

    def _wake(self) -> None:
        self._idle = False
        fut = self._wakeup
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _overflow(self, fields: dict[str, str]) -> None:
        if self._spilling:  # the sender is draining the queue into the spool; stay behind it
            self._queue.append(fields)
            return
        if self.spool is None or self.spool.broken or self.spool.closed:
            self.counts.dropped += 1
            if not self.health.queue_full_logged:
                self.health.queue_full_logged = True
                log.error("sink %s: memory queue full (%d events) and no working spool; dropping events",
                          self.stream, self._max_queue)
            return
        self._spooling = True  # from now on the spool holds everything newer than the queue
        self._pseq = self._qseq + len(self._queue)
        self._spool_put(fields)

    def _spool_put(self, fields: dict[str, str]) -> None:
        sp = self.spool
        if sp is None or sp.broken or sp.closed:
            self.counts.dropped += 1
            return
        try:
            ok = sp.append(self.sink.instance, self._pseq, fields)
        except OSError as exc:  # raised by the flush after the event was buffered: it is among sp.lost
            self._pseq += 1
            self.counts.spooled += 1
            self._spool_failed(exc)
            return
        except Exception:  # not a dict: put() must not raise into a protocol callback
            self.counts.dropped += 1
            log.error("sink %s: dropped an event that is not a dict: %.100r", self.stream, fields)
            return
        if ok:
            self._pseq += 1
            self.counts.spooled += 1
            if not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_spool)
        else:
            self.counts.dropped += 1
            if not self.health.spool_full_logged:
                self.health.spool_full_logged = True
                log.error("sink %s: spool %s is full (%d bytes unreplayed); dropping events until it drains",
                          self.stream, sp.path, sp.unread)

    def _flush_spool(self) -> None:
        self._flush_scheduled = False
        if self.spool is not None and not self.spool.broken and not self.spool.closed:
            try:
                self.spool.flush()
            except OSError as exc:
                self._spool_failed(exc)

    def _spool_failed(self, exc: OSError) -> None:
        self._count_spool_losses()
        if self.spool is not None and not self.spool.broken:
            self.spool.broken = f"{exc.strerror or exc}"
            log.error("sink %s: spool %s failed (%s); events that cannot reach Redis are now dropped",
                      self.stream, self.spool.path, self.spool.broken)

    def _count_spool_losses(self) -> None:
        """Events a failed spool write discarded were counted as spooled; they are dropped too."""
        sp = self.spool
        if sp is not None and sp.lost:
            log.error("sink %s: %d spooled events were lost when writing %s failed", self.stream, sp.lost, sp.path)
            self.counts.dropped += sp.lost
            sp.lost = 0

    # -- state ------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        head = self._head
        return len(self._queue) + (len(head.events) if head is not None and head.spool is None else 0)

    @property
    def spooling(self) -> bool:
        """New events go to the spool (it holds older ones, or Redis is away)."""
        return self._spooling

    @property
    def in_flight(self) -> bool:
        """A batch was sent and Redis has not confirmed it yet."""
        return self._head is not None

    @property
    def where(self) -> str:
        """The Redis this lane writes to, for logs and readiness."""
        return (self.route.node or self.sink.target).display

    def readiness(self) -> str | None:
        if self.health.up:
            return None
        sp = self.spool
        reason = self.health.down_reason or "connecting"
        if sp is None:
            return f"redis {self.where} unreachable ({reason}) and no spool configured"
        if sp.broken:
            return f"redis {self.where} unreachable ({reason}) and spool failed: {sp.broken}"
        if sp.closed:
            return f"redis {self.where} unreachable ({reason}) and the sink is not running"
        if self.health.spool_full_logged:
            return f"redis {self.where} unreachable ({reason}) and spool {sp.path} is full"
        return None

    # -- lifecycle --------------------------------------------------------------------------------

    def open_spool(self) -> None:
        if self.spool is None:
            return
        left = self.spool.open()
        if left:
            self._spooling = True  # events put from now on go behind the old ones
            self._pseq = self._qseq + len(self._queue)
            log.info("sink %s: spool %s holds %d events from an earlier run; replaying them first",
                     self.stream, self.spool.path, left)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"sink {self.stream}")

    async def close(self, timeout: float) -> None:
        self._closing = True
        self._wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._finish()

    def _finish(self) -> None:
        """Whatever Redis did not confirm goes to the spool (or is counted as dropped)."""
        self.route.drop()
        sp = self.spool
        head, self._head = self._head, None
        if head is not None and head.spool is not None and sp is not None:
            sp.rewind(head.spool)
            head = None
        events = (head.events if head is not None else []) + self._queue
        seq0 = head.seq0 if head is not None else self._qseq
        self._queue = []
        if events:
            written = 0
            if sp is not None and not sp.broken and not sp.closed:
                try:
                    if sp.unread:
                        written = sp.prepend(self.sink.instance, seq0, events)
                    else:
                        written = sp.append_many(self.sink.instance, seq0, events)
                except OSError as exc:
                    written = exc.taken if isinstance(exc, SpoolWriteError) else 0
                    self._spool_failed(exc)
            self.counts.spooled += written
            self.counts.dropped += len(events) - written
            if written:
                log.info("sink %s: closing before redis confirmed %d events; spooled them to %s",
                         self.stream, written, sp.path)  # type: ignore[union-attr]
            if len(events) > written:
                log.error("sink %s: closing; %d events could not be sent or spooled and are lost",
                          self.stream, len(events) - written)
        self._spooling = True  # puts after close are counted as dropped
        if sp is not None and not sp.closed:
            try:
                sp.close()
            except OSError as exc:
                log.error("sink %s: closing spool %s: %s", self.stream, sp.path, exc.strerror or exc)
                self._count_spool_losses()
            if sp.pending > 0:
                log.info("sink %s: %d events remain in spool %s for the next start",
                         self.stream, sp.pending, sp.path)

    # -- sender -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        """The sender; a bug in it is logged and the loop restarts, it must not die silently."""
        while True:
            try:
                await self._send_loop()
                return
            except Exception:
                log.exception("sink %s: sender failed; restarting it", self.stream)
                self.counts.send_errors += 1
                self.route.drop()
                if self._closing:
                    return
                await self._pause(1.0)

    async def _send_loop(self) -> None:
        """Connect, send the next batch, wait for its reply; on any failure back off and send it again.

        Every failure ends in `_back_off` (or in giving up while closing); the batch stays `_head` until
        Redis confirms it, so a resend carries the same sequence numbers and the marker skips what Redis has.
        """
        route = self.route
        self.backoff.reset()
        route.hops = 0
        while True:
            if route.conn is None or route.conn.closed:
                if route.conn is not None:
                    route.drop()
                    await self._went_down("connection closed by redis")
                node = route.node or self.sink.target
                try:
                    await self._connect(node)
                except _CONNECT_ERRORS as exc:
                    await self._went_down(describe(exc))
                    if self._closing:
                        return
                    await self._relocate(node)
                    await self._back_off()
                    continue
            await self._linger()
            batch = self._head or self._next_batch()
            if batch is None:
                if self._closing:
                    return
                self._idle = True
                await self._wait(None)
                continue
            self._head = batch
            started = self._sent_at = time.perf_counter()
            try:
                reply = await self._round_trip(batch)
            except _SEND_ERRORS as exc:
                self.counts.send_errors += 1
                route.drop()
                await self._went_down(describe(exc, "no reply"))
                await self._back_off()  # no wait while closing: one more try to send what is in flight
                continue
            if isinstance(reply, hiredis.ReplyError):
                if self._refused(str(reply)):
                    continue
                # TRYAGAIN (keys of the slot half migrated), CLUSTERDOWN, LOADING, endless redirections …:
                # spool and retry later; the marker makes the retry safe.
                await self._went_down(f"redis error: {reply}")
                if self._closing:
                    return
                await self._back_off()
                continue
            route.hops = 0
            self._confirmed(batch, reply, time.perf_counter() - started)

    async def _connect(self, node: RedisTarget) -> None:
        sink = self.sink
        conn = await RedisConnection.open(node, sink.connect_timeout, f"{sink.client_name}-{sink.instance}")
        conn.on_lost = self._wake
        self.route.conn = conn
        self.counts.connects += 1
        self.backoff.reset()
        self._came_up()

    async def _back_off(self) -> None:
        """Wait before the next try, longer after each failure (close() cuts it short); redirections count
        from zero again."""
        await self._pause(self.backoff.next())
        self.route.hops = 0

    async def _linger(self) -> None:
        """At most one round trip per linger unless a full batch waits: its fixed costs are shared by more
        events."""
        sink = self.sink
        if (self._head is None and sink.linger and 0 < len(self._queue) < sink.batch_max
                and not self._spooling and not self._closing):
            rest = self._sent_at + sink.linger - time.perf_counter()
            if rest > 0:
                await asyncio.sleep(rest)

    async def _round_trip(self, batch: _Batch) -> Any:
        """Send the batch and return the script's reply (an error reply too); following one ASK."""
        sink, route = self.sink, self.route
        conn = route.conn
        assert conn is not None
        async with asyncio.timeout(sink.send_timeout):
            if sink.wait_replicas:
                reply, copies = await conn.requests(batch.data + sink.wait_command, 2)
                self._check_replicated(reply, copies)
            else:
                reply = await conn.request(batch.data)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("ASK ") and route.hops < MAX_HOPS:
                route.hops += 1
                reply = await self._asked(str(reply), batch)
        return reply

    def _refused(self, text: str) -> bool:
        """An error reply to a batch: drop the connection; True when the batch can be sent again at once."""
        self.counts.send_errors += 1
        self.route.drop()
        if text.startswith("NOSCRIPT"):  # SCRIPT FLUSH or a failover: load it again
            return True
        if text.startswith("MOVED "):  # Redis Cluster: the slot's owner is another node from now on
            self.route.node = self._moved(text)
            if self.route.hops < MAX_HOPS:
                self.route.hops += 1
                return True
        return False

    def _confirmed(self, batch: _Batch, reply: Any, elapsed: float) -> None:
        """Redis holds the batch: it leaves memory, or the spool."""
        c = self.counts
        c.round_trip(elapsed)
        self._head = None
        n = len(batch.events)
        c.sent += n
        c.batches += 1
        if isinstance(reply, list):
            self._trimmed_unread(reply[1:])
            reply = reply[0]
        c.deduplicated += int(reply)
        if batch.spool is not None:
            c.replayed += n
            self.spool.consumed(batch.spool)  # type: ignore[union-attr]

    def _trimmed_unread(self, pairs: list[Any]) -> None:
        """Statements the stream cap (stream_maxlen) removed before a consumer group read them."""
        counts = {bytes(pairs[k]).decode(errors="replace"): int(pairs[k + 1]) for k in range(0, len(pairs) - 1, 2)}
        self.counts.trimmed_unread += sum(counts.values())
        now = time.monotonic()
        if now - self.health.trim_logged >= 60:  # once a minute at most: it goes on for as long as a group lags
            self.health.trim_logged = now
            log.warning("stream %s is at its cap (stream_maxlen %d): a trim removed statements before these "
                        "consumer groups read them: %s (totals per group: HGETALL %s:trimmed). Start more "
                        "analyzers, raise stream_maxlen, or destroy a group nobody reads any more",
                        self.stream, self.sink.maxlen, ", ".join(f"{g} {n}" for g, n in counts.items()),
                        self.stream)

    def _moved(self, reply: str) -> RedisTarget:
        """'MOVED <slot> <host>:<port>': the configured target's credentials and TLS, at that node."""
        node = self.sink.cluster.redirection(reply)
        if node != self.route.node:
            log.info("sink %s: redis cluster slot %s is served by %s:%s", self.stream, reply.split()[1],
                     node.host, node.port)
        return node

    async def _asked(self, reply: str, batch: _Batch) -> Any:
        """'ASK <slot> <host>:<port>': the slot is migrating and our keys have left; this batch goes there.

        Only this batch, after ASKING (good for one command): the slot's owner stays the one we
        know until a MOVED says otherwise.  The connection is kept while ASKs point to the same node.
        """
        sink = self.sink
        node = sink.cluster.redirection(reply)
        conn = self.route.ask_conn
        if conn is None or conn.closed or conn.node != node:
            if conn is not None:
                conn.close()
            log.info("sink %s: redis cluster slot %s is migrating; following ASK to %s:%s", self.stream,
                     reply.split()[1], node.host, node.port)
            conn = await RedisConnection.open(node, sink.connect_timeout, f"{sink.client_name}-{sink.instance}")
            conn.node = node
            self.route.ask_conn = conn
        if not sink.wait_replicas:
            asking, result = await conn.requests(ASKING + batch.data, 2)
            return asking if isinstance(asking, hiredis.ReplyError) else result
        asking, result, copies = await conn.requests(ASKING + batch.data + sink.wait_command, 3)
        if isinstance(asking, hiredis.ReplyError):
            return asking
        self._check_replicated(result, copies)
        return result

    def _check_replicated(self, reply: Any, copies: Any) -> None:
        """With wait_replicas: a batch the script applied but too few replicas hold is not sent yet."""
        wanted = self.sink.wait_replicas
        if not isinstance(reply, hiredis.ReplyError) and not (isinstance(copies, int) and copies >= wanted):
            raise RedisReplyError(f"{copies} of {wanted} replicas acknowledged a batch")

    async def _relocate(self, failed: RedisTarget) -> None:
        """A node did not answer.  On a cluster, ask the others which node serves this stream's slot now.

        The answer may well be the same node (it restarts; there is no replica to take over): then the
        lane keeps trying it, spooling meanwhile.  Nothing known (plain Redis): back to the seed.
        """
        cluster = self.sink.cluster
        self.route.node = await cluster.slot_owner(self.slot, failed) if cluster.nodes else None

    # -- batches ----------------------------------------------------------------------------------

    def _encode(self, head: tuple, batch: _Batch) -> bytes:
        return encode_batch(head, batch.seq0, self.sink.maxlen, self.sink.marker_ttl, batch.events, self.sink.entry)

    def _next_batch(self) -> _Batch | None:
        """The next batch to send, encoded; a batch too big for one command is split."""
        limit = self.sink.batch_max
        while True:
            batch = self._take(limit)
            if batch is None:
                return None
            head = ("EVALSHA", SCRIPT_SHA, 2, self.stream, batch.marker)
            try:
                batch.data = self._encode(head, batch)
            except Exception:  # not a dict: keep the sequence numbers, send an empty event in its place
                log.exception("sink %s: events that are not dicts were replaced by empty ones", self.stream)
                batch.events = [e if isinstance(e, dict) else {} for e in batch.events]
                batch.data = self._encode(head, batch)
            if len(batch.data) <= MAX_BATCH_BYTES:
                return batch
            if len(batch.events) > 1:
                self._untake(batch)
                limit = len(batch.events) // 2
                continue
            # One event bigger than Redis takes in a command (proto-max-bulk-len): it would block the
            # lane for ever.  Send an empty event in its place (skipped by the script) and count a drop.
            log.error("sink %s: dropped an event of %d bytes, too big for one Redis command",
                      self.stream, len(batch.data))
            self.counts.dropped += 1
            batch.events = [{}]
            batch.data = self._encode(head, batch)
            return batch

    def _take(self, limit: int) -> _Batch | None:
        """Up to ``limit`` events: memory first (older than the spool whenever both hold events)."""
        q = self._queue
        if q:
            if len(q) <= limit:
                events, self._queue = q, []
            else:
                events = q[:limit]
                del q[:limit]
            batch = _Batch(self.marker, self._qseq, events, None)
            self._qseq += len(events)
            return batch
        if self._spooling and self.spool is not None and not self.spool.closed:
            try:
                read = self.spool.read(limit)
            except OSError as exc:
                self._spool_failed(exc)
                return None
            if read is None:
                self._spool_drained()
                return None
            return _Batch(self._marker_base + read.instance, read.seq0, read.events, read)
        return None

    def _untake(self, batch: _Batch) -> None:
        if batch.spool is not None:
            self.spool.rewind(batch.spool)  # type: ignore[union-attr]
        else:
            self._queue[:0] = batch.events
            self._qseq = batch.seq0

    def _spool_drained(self) -> None:
        sp = self.spool
        assert sp is not None
        try:
            sp.reset()
        except OSError as exc:
            self._spool_failed(exc)
        else:
            if sp.broken:  # emptied after a failure (a full disk): worth trying again at the next outage
                log.warning("sink %s: spool %s replayed and emptied after it failed (%s); using it again",
                            self.stream, sp.path, sp.broken)
                sp.broken = None
        # Even a spool that stays broken ends here once what it holds is replayed: new events go to
        # memory again. Staying in spooling mode would drop every event for good, Redis back or not.
        self._spooling = False
        self._qseq = self._pseq
        self.health.spool_full_logged = False
        log.info("sink %s: spool drained (%d events replayed so far); back to sending from memory",
                 self.stream, self.counts.replayed)

    # -- up and down ------------------------------------------------------------------------------

    def _came_up(self) -> None:
        health = self.health
        health.up = True
        health.queue_full_logged = False
        sp = self.spool
        backlog = f"; {sp.pending} spooled events to replay" if sp is not None and sp.pending else ""
        if health.down_since is not None:
            log.info("sink %s: redis %s is back after %.1fs%s", self.stream, self.where,
                     time.monotonic() - health.down_since, backlog)
        elif self.counts.connects == 1:
            log.info("sink %s: writing %s entries to redis %s%s", self.stream,
                     self.sink.entry, self.where, backlog)
        health.down_since = None
        health.down_reason = ""

    async def _went_down(self, reason: str) -> None:
        health = self.health
        was_up = health.up or health.down_since is None
        health.up = False
        health.down_reason = reason
        if was_up:
            health.down_since = time.monotonic()
            sp = self.spool
            where = (f"spooling events to {sp.path}" if sp is not None and not sp.broken else
                     f"holding up to {self._max_queue} events in memory, then dropping")
            log.warning("sink %s: redis %s unreachable (%s); %s", self.stream, self.where,
                        reason, where)
        await self._spill()

    async def _spill(self) -> None:
        """Move what memory holds to the spool so a crash loses nothing and puts write to disk.

        If the spool already has unread events that are newer than memory (the queue overflowed),
        memory stays as it is: it is sent first when Redis returns, or prepended at close.
        """
        sp = self.spool
        if sp is None or sp.broken or sp.closed:
            return
        head = self._head
        if head is not None and head.spool is not None:
            sp.rewind(head.spool)
            self._head = head = None
        if (head is not None or self._queue) and sp.unread:
            return
        if head is not None:
            self._untake(head)
            self._head = None
        self._spilling = True
        pos = spooled = 0  # pos: queue events handled, spooled or (the spool full) dropped
        try:
            while pos < len(self._queue):
                chunk = self._queue[pos:pos + 4096]
                spooled += sp.append_many(self.sink.instance, self._qseq + pos, chunk)
                sp.flush()
                pos += len(chunk)
                await asyncio.sleep(0)
        except OSError as exc:
            # Nothing leaves memory: what reached the file carries the same sequence numbers, so a later
            # replay is recognised as already sent, and what the failed write lost is still here.
            sp.lost = 0
            self._spool_failed(exc)
            return
        finally:
            self._spilling = False
        del self._queue[:pos]
        self._qseq += pos
        self.counts.spooled += spooled
        self.counts.dropped += pos - spooled
        if not self._spooling:
            self._spooling = True
            self._pseq = self._qseq

    async def _pause(self, delay: float) -> None:
        """Back off before reconnecting; close() cuts it short, put() does not."""
        if self._closing:
            return
        await self._wait(delay)

    async def _wait(self, timeout: float | None) -> None:
        assert self._loop is not None
        fut = self._wakeup = self._loop.create_future()
        try:
            if timeout is None:
                await fut
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await fut
        finally:
            self._idle = False
            self._wakeup = None
