"""The statement sink: captured statements → Redis Stream, without ever making a client wait.

``put()`` runs inside the proxy's protocol callbacks, so it only appends to a list (~0.1 µs).
A sender task per stream ("lane") takes whatever piled up since its last round trip and ships it
as **one EVALSHA per batch**: a small Lua script XADDs every event, trims the stream once
(``MAXLEN ~``) and advances an idempotency marker, all atomically.  bench/sink_bench.py measured
the alternatives; this one costs the proxy's core ~0.8 µs per 15-field event, put() included
(redis-py's pipeline: ~23 µs; hand-packed XADDs: ~3 µs), because the values of a whole batch
travel as one NUL-joined string (one C-level ``str.join``) and the field names once per distinct
key set, instead of being RESP-framed one by one.  Redis pays ~3.5 µs per event for it.

Exactly once, in order, across outages: every event of a sink instance has a sequence number
(implicit: its position in put order).  A batch says "events seq0 … seq0+n-1 of instance X"; the
script compares with the marker ``<prefix>:sink:{<tag>}:<X>`` (the next sequence number Redis
already holds; `marker_base` names it otherwise for a prefix with braces) and skips the prefix
that is already there.  So a batch whose reply was lost (timeout, killed or paused Redis, a
SIGSTOPped server that executes the stale request later) can simply be sent again, from memory
or from the spool, even by the next process.

While Redis is unreachable or too slow, events go to an append-only spool file (see `Spool`);
while the spool holds anything, new events go behind it, so order holds.  Only a full spool
drops events, and each drop is counted.

Sharding (optional): ``shards=N`` gives N lanes, streams ``<prefix>:statements:{0}`` …
``{N-1}`` (hash tags, so each stream and its marker share a Redis Cluster slot); ``route``
(the session id) picks the lane, so one session always lands on one stream.  Each lane has its
own connection, spool file (``<spool_path>.<i>``), sequence numbers and marker.

Redis Cluster: the sink is given one node (the seed).  A lane follows ``MOVED`` to its slot's
owner and remembers it; ``ASK`` (slot being migrated) sends that one batch to the importing node
after ``ASKING`` without changing what it remembers.  When the owner cannot be reached, the lane
asks the seed or any other node it has heard of (``CLUSTER SLOTS``) who serves its slot now, and
spools meanwhile.  A stream's marker is always in the stream's slot (`marker_base`), so the
script runs where both are, MIGRATE moves them together, and a replay stays exactly once.  All of
this lives in the sender; ``put()`` does not change.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import ssl
import struct
import time
import uuid
import zlib
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain, islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hiredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.connection import parse_url

from fasterdata.config.redisurl import one_url_per_host
from fasterdata.proxy.events import BUNDLE_MAX, ENTRY_FORMATS, PACKED_FIELD, pack

if TYPE_CHECKING:
    from fasterdata.config.settings import ProxySettings

log = logging.getLogger("fasterdata.sink")

# KEYS: stream, marker.  ARGV: seq0, maxlen, marker ttl, value mode, then
# - modes 'z' (all values of the batch in one NUL-joined string) and 'a' (one argument per value):
#   number of key sets, per key set its length and names, number of events, per event its key-set
#   index (0-based), then the values;
# - mode 'p' (bundled entries, proxy.events): events an entry at most, number of events, per event
#   its field count, then per event its packed value (names and values joined with NUL).
# Returns how many leading events were already in the stream (the marker said so) and were skipped;
# when its trim took statements a consumer group had not read yet, {skipped, group, count, …} instead
# (the counts also go to the hash `<stream>:trimmed`, group → total).
SCRIPT = """
local seq0 = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local mode = ARGV[4]
local p = 6
local sets = {}
local bundle = 0
if mode == 'p' then
  bundle = tonumber(ARGV[5])
else
  for i = 1, tonumber(ARGV[5]) do
    local c = tonumber(ARGV[p])
    local t = {}
    for j = 1, c do t[j] = ARGV[p + j] end
    sets[i] = t
    p = p + c + 1
  end
end
local n = tonumber(ARGV[p])
local ids = p
local skip = 0
local done = redis.call('GET', KEYS[2])
if done then
  skip = tonumber(done) - seq0
  if skip >= n then return n end
  if skip < 0 then skip = 0 end
end
local vp = p + n + 1
local s = nil
if mode == 'z' then s = ARGV[vp] end
local sp, last, find, sub = 1, 0, string.find, string.sub
local a, width = nil, -1  -- argument table, reused while the key count stays the same (saves ~0.5 us)
if s then last = #s + 1 end
local entries, statements = 0, 0  -- what this batch added
if bundle > 0 then  -- up to `bundle` events an entry: Redis's cost an entry is paid once for them all
  local concat = table.concat
  for i = skip + 1, n, bundle do
    local j = math.min(i + bundle - 1, n)
    redis.call('XADD', KEYS[1], '*', 'events',
      concat(ARGV, ',', ids + i, ids + j) .. '\\0' .. concat(ARGV, '\\0', vp + i - 1, vp + j - 1))
    entries = entries + 1
  end
  statements = n - skip
else
  for i = 1, n do
    local keys = sets[tonumber(ARGV[ids + i]) + 1]
    local c = #keys
    if i > skip and c > 0 then
      if c ~= width then a, width = {}, c end
      if s then
        for j = 1, c do
          local e = find(s, '\\0', sp, true) or last
          a[2 * j - 1] = keys[j]
          a[2 * j] = sub(s, sp, e - 1)
          sp = e + 1
        end
      else
        for j = 1, c do
          a[2 * j - 1] = keys[j]
          a[2 * j] = ARGV[vp]
          vp = vp + 1
        end
      end
      redis.call('XADD', KEYS[1], '*', unpack(a))
      entries = entries + 1
    elseif s then
      for _ = 1, c do sp = (find(s, '\\0', sp, true) or last) + 1 end
    else
      vp = vp + c
    end
  end
end
redis.call('SET', KEYS[2], string.format('%d', seq0 + n), 'EX', ARGV[3])
if bundle == 0 then statements = entries end
-- The cap (maxlen, 0: none) counts statements, and a bundled entry holds several: `<stream>:held` keeps
-- the count (and the entries it saw; `fasterdata top` shows it). A length it did not expect (the stream
-- trimmed or deleted by hand, a proxy of an older release) rescales the count by its statements an entry.
-- pcall: an ACL may refuse the hash (then each entry counts as one statement).
local hk = KEYS[1] .. ':held'
local before = redis.call('XLEN', KEYS[1])
local okh, h = pcall(redis.call, 'HMGET', hk, 'statements', 'entries')
if not okh then h = {} end
local held, seen, prior = tonumber(h[1]), tonumber(h[2]), before - entries
if held and seen ~= prior then held = seen and seen > 0 and math.floor(held * prior / seen) or prior end
held = math.max((held or prior) + statements, before)
local counts, oldest, cut, trimmed = {}, {}, 0, 0  -- the oldest entries' statements and ids; how many go
if maxlen > 0 and held > maxlen and held == before then  -- one statement an entry: nothing to look at
  cut, trimmed = held - maxlen, held - maxlen
elseif maxlen > 0 and held > maxlen then
  local excess, last = held - maxlen, '-'
  while trimmed < excess do
    local chunk = redis.call('XRANGE', KEYS[1], last, '+', 'COUNT', 100)
    if #chunk == 0 then  -- the count was too high: it is now exact
      held = trimmed
      excess = held - maxlen
      trimmed, cut = 0, 0
      while cut < #counts and trimmed < excess do cut = cut + 1; trimmed = trimmed + counts[cut] end
      break
    end
    for _, e in ipairs(chunk) do
      local f, c = e[2], 1
      if #f == 2 and f[1] == 'events' then c = select(2, string.gsub(string.match(f[2], '^[^%z]*'), ',', '')) + 1 end
      cut = cut + 1
      counts[cut], oldest[cut] = c, e[1]
      trimmed = trimmed + c
      if trimmed >= excess then break end
    end
    last = '(' .. oldest[cut]
  end
end
local lost = nil
if cut > 0 then
  -- What the trim takes before a consumer group read it: a group's lag (entries-added - entries-read)
  -- counts the entries it has still to read, the newest ones. The lag is read before the trim: after it,
  -- Redis may estimate the lag from what is left. pcall: an ACL may refuse XINFO (nothing is counted then).
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if oldest[cut] then
    local ms, sq = string.match(oldest[cut], '^(%d+)-(%d+)$')  -- MINID keeps what follows the last to go
    redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. string.format('%d', tonumber(sq) + 1))
  else
    redis.call('XTRIM', KEYS[1], 'MAXLEN', before - cut)
  end
  for _, g in ipairs(ok and groups or {}) do
    local name, unread = nil, nil
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'lag' then unread = tonumber(g[k + 1]) end
    end
    local took = 0
    if name and unread then
      local first = math.max(1, before - unread + 1)  -- this group's first unread entry
      if oldest[cut] then
        for k = first, cut do took = took + counts[k] end
      else
        took = math.max(0, cut - first + 1)  -- one statement an entry
      end
    end
    if took > 0 then
      pcall(redis.call, 'HINCRBY', KEYS[1] .. ':trimmed', name, took)  -- an ACL may refuse it: still reported
      lost = lost or {skip}
      lost[#lost + 1] = name
      lost[#lost + 1] = took
    end
  end
end
if okh then pcall(redis.call, 'HSET', hk, 'statements', held - trimmed, 'entries', before - cut) end
return lost or skip
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

# A batch whose command grows past this is split (Redis refuses a bulk string over 512 MB by default).
MAX_BATCH_BYTES = 32 << 20
# Lua's unpack() stops near 8000 values: flat events with more fields are cut to this many.
MAX_FIELDS = 3000

# Batch round-trip buckets (seconds) for the send-latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# -- encoding -------------------------------------------------------------------------------------

class _KeySets(dict):
    """Key tuple → index, numbering new key sets as they appear; lookups stay in C."""

    def __missing__(self, keys: tuple) -> int:
        index = self[keys] = len(self)
        return index


def _b(value: Any) -> bytes:
    """Bytes for one value on the slow path: keeps raw bytes smuggled in by surrogateescape."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        value = str(value)
    try:
        return value.encode()
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace")


def encode_batch(head: tuple, seq0: int, maxlen: int, ttl: int, events: list[dict[str, str]],
                 entry: str = "flat") -> bytes:
    """One EVALSHA command (RESP bytes) adding ``events``; ``head`` = (EVALSHA, sha, 2, stream, marker).

    entry (proxy.events): ``bundled`` or ``packed``: each event is packed to one string (names and
    values joined with NUL), sent one argument an event; the script joins up to BUNDLE_MAX of them an
    entry (bundled) or adds one an entry (packed). An event that cannot be packed sends the batch the
    packed way, that event flat. ``flat``, fast path: values joined with NUL in C (PostgreSQL text
    cannot hold NUL, so the proxy's values never do); a batch where the count of NULs says otherwise,
    or with non-str values, takes the slow path with one argument per value.
    """
    packed = entry != "flat"
    if packed:
        n = len(events)
        try:  # every event packed at C speed; the NUL count of the batch proves no value held one
            values = list(map("\x00".join, map(chain.from_iterable, map(dict.items, events))))
            if sum(map(str.count, values, repeat("\x00"))) == 2 * sum(map(len, events)) - n:
                if entry == "bundled":
                    return hiredis.pack_command((*head, seq0, maxlen, ttl, "p", BUNDLE_MAX, n, *map(len, events),
                                                 *values))
                return hiredis.pack_command((*head, seq0, maxlen, ttl, "a", 1, 1, PACKED_FIELD, n, *repeat(0, n),
                                             *values))
        except (TypeError, UnicodeError):  # a value not str, or surrogates: the general path below
            pass
        events = [{PACKED_FIELD: p} if (p := pack(e)) is not None else e for e in events]
    sets = _KeySets()
    ids = list(map(sets.__getitem__, map(tuple, events)))
    if any(len(keys) > MAX_FIELDS for keys in sets):
        log.error("events with more than %d fields were cut to that many", MAX_FIELDS)
        events = [dict(islice(e.items(), MAX_FIELDS)) if len(e) > MAX_FIELDS else e for e in events]
        return encode_batch(head, seq0, maxlen, ttl, events)
    nvalues = sum(map(len, events))
    joined: str | None = None
    if not packed:
        try:
            joined = "\x00".join(chain.from_iterable(map(dict.values, events)))
            if nvalues == 0 or joined.count("\x00") != nvalues - 1:
                joined = None
        except TypeError:
            joined = None
    args: list[Any] = [*head, seq0, maxlen, ttl, "a" if joined is None else "z", len(sets)]
    for keys in sets:
        args.append(len(keys))
        args.extend(keys)
    args.append(len(events))
    args.extend(ids)
    if joined is not None:
        args.append(joined)
    else:
        args.extend(map(_b, chain.from_iterable(map(dict.values, events))))
    try:
        return hiredis.pack_command(tuple(args))
    except (UnicodeError, TypeError):
        return hiredis.pack_command(tuple(a if isinstance(a, int) else _b(a) for a in args))


# -- spool ----------------------------------------------------------------------------------------

_MAGIC = b"FDSPOOL1"
_REC = struct.Struct("<II")  # payload length, crc32(payload)
_SEG = struct.Struct("<Q")  # after b"S": first sequence number, then the instance id (ascii)
_CHUNK = 1 << 20
_WBUF = 1 << 18


def _record(payload: bytes) -> bytes:
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


def _event_record(fields: dict[str, str]) -> bytes:
    """b"E" + NUL-joined names and values (UTF-8), or b"R" + a RESP array when NUL or odd types occur."""
    if fields:
        try:
            text = "\x00".join(chain.from_iterable(fields.items()))
            if text.count("\x00") == 2 * len(fields) - 1:
                return _record(b"E" + text.encode())
        except (TypeError, UnicodeError):
            pass
        return _record(b"R" + hiredis.pack_command(tuple(map(_b, chain.from_iterable(fields.items())))))
    return _record(b"E")


def _segment_record(instance: str, seq: int) -> bytes:
    return _record(b"S" + _SEG.pack(seq) + instance.encode())


def _decode_event(payload: bytes) -> dict[str, str]:
    if payload[:1] == b"E":
        if len(payload) == 1:
            return {}
        it = iter(payload[1:].decode("utf-8", "surrogateescape").split("\x00"))
        return dict(zip(it, it, strict=True))
    reader = hiredis.Reader()
    reader.feed(payload[1:])
    items = reader.gets()
    it = iter(item.decode("utf-8", "surrogateescape") for item in items)
    return dict(zip(it, it, strict=True))


class SpoolLocked(OSError):
    """Another process holds the spool file; each proxy process needs its own spool path."""


def spool_unusable(path: str, exc: OSError) -> str:
    """The start-up error line for a spool that cannot be opened."""
    if isinstance(exc, SpoolLocked):
        return f"cannot use the spool {path}: {exc}"
    return f"cannot use the spool {path}: {exc.strerror or exc} (spool_dir must be a writable directory of this host)"


class SpoolWriteError(OSError):
    """Writing the spool failed part-way through a list of events.

    The first ``taken`` events belong to the spool from now on: stored by an earlier write, or lost
    with the failed one (``Spool.lost`` counts those); the rest are still the caller's."""

    def __init__(self, exc: OSError, taken: int) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.taken = taken


@dataclass
class SpoolRead:
    """A batch read from the spool: enough to replay it, or to put the reader back if it fails."""

    instance: str
    seq0: int
    events: list[dict[str, str]]
    start: int
    start_state: tuple[str, int] | None
    end: int


class Spool:
    """Append-only file of events that could not go to Redis yet, read back in order.

    Format: magic ``FDSPOOL1``, then records ``<u32 length><u32 crc32><payload>``.  Payload b"S"
    starts a segment (instance id and the sequence number of its first event; following events
    count up from there), b"E"/b"R" is one event.  A torn or corrupt tail (crash, power loss) is
    cut off at open: fsync per record is not needed.  Events are written through a small buffer
    flushed on every event-loop turn, so a crashed process loses at most that turn's events.

    ``max_bytes`` bounds the unreplayed data; while a replay runs the file itself may grow to
    twice that before it is emptied.  A flock keeps two processes off one file.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.pending = 0  # events written and not yet acknowledged by Redis
        self.broken: str | None = None  # the I/O error that stopped the spool
        self.lost = 0  # events discarded by a failed write, for the owner to count as dropped
        self.closed = True  # until open()
        self._fd = -1
        self._size = 0  # logical size: file + write buffer
        self._rd = 0  # next unread record
        self._rstate: tuple[str, int] | None = None  # segment of the record at _rd: (instance, next seq)
        self._winst = ""  # segment of the last record written, to know when a new one must start
        self._wseq = -1
        self._wbuf = bytearray()
        self._wcount = 0  # events in _wbuf
        self._bad_at = -1

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> int:
        """Open or create the file, lock it, cut a torn tail; returns events left by an earlier run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open_locked(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, len(_MAGIC), 0) != _MAGIC:
            aside = self.path.with_name(f"{self.path.name}.unknown-{int(time.time())}")
            os.rename(self.path, aside)
            log.error("spool %s is not a fasterdata spool; moved it to %s and started a new one",
                      self.path, aside)
            os.close(fd)
            fd = self._open_locked(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            size = 0
        if size == 0:
            os.write(fd, _MAGIC)
            size = len(_MAGIC)
        self._fd = fd
        self.closed = False
        self._size = size
        self._rd = len(_MAGIC)
        count = sum(1 for _off, _end, payload in self._scan(self._rd, size) if payload[:1] != b"S")
        end = self._scan_end
        if end < size:
            log.warning("spool %s: cut %d bytes of torn or corrupt data at offset %d", self.path, size - end, end)
            os.ftruncate(fd, end)
            self._size = end
        self.pending = count
        return count

    def _open_locked(self, path: Path, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"spool {path} is in use by another process; give each proxy process its "
                              "own spool path") from None
        return fd

    def close(self) -> None:
        """Flush and fsync; an empty spool is removed.  The lock goes with the descriptor."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
            if self._rd >= self._size:
                self.path.unlink(missing_ok=True)
            else:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    # -- writing --------------------------------------------------------------------------------

    @property
    def unread(self) -> int:
        return self._size - self._rd

    @property
    def size(self) -> int:
        return self._size

    def has_room(self, extra: int) -> bool:
        return self._size - self._rd + extra <= self.max_bytes and self._size + extra <= 2 * self.max_bytes

    def append(self, instance: str, seq: int, fields: dict[str, str]) -> bool:
        """Buffer one event with sequence number ``seq``; False when it does not fit (the caller drops it)."""
        rec = _event_record(fields)
        if instance != self._winst or seq != self._wseq:
            rec = _segment_record(instance, seq) + rec
        if not self.has_room(len(rec)):
            return False
        self._wbuf += rec
        self._wcount += 1
        self._size += len(rec)
        self._winst = instance
        self._wseq = seq + 1
        self.pending += 1
        if len(self._wbuf) >= _WBUF:
            self.flush()
        return True

    def append_many(self, instance: str, seq0: int, events: list[dict[str, str]]) -> int:
        """Events seq0, seq0+1 …; returns how many fit (the rest are the caller's drops)."""
        for i, fields in enumerate(events):
            try:
                if not self.append(instance, seq0 + i, fields):
                    return i
            except OSError as exc:
                raise SpoolWriteError(exc, i + 1) from exc
        return len(events)

    def prepend(self, instance: str, seq0: int, events: list[dict[str, str]]) -> int:
        """Put events *before* everything unread (they are older), by rewriting the file.

        Only needed at shutdown or an outage when events still in memory are older than the spool
        (the memory queue overflowed while Redis was slow): rare, so a copy is acceptable.
        """
        self.flush()
        unread = self._size - self._rd
        tail_seg = _segment_record(*self._rstate) if self._rstate is not None and unread else b""
        budget = self.max_bytes - unread - len(tail_seg)
        recs = bytearray(_segment_record(instance, seq0))
        written = 0
        for fields in events:
            rec = _event_record(fields)
            if len(recs) + len(rec) > budget:
                break
            recs += rec
            written += 1
        if not written:
            return 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = self._open_locked(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        try:
            _write_all(fd, _MAGIC + recs + tail_seg)
            off = self._rd
            while off < self._size:
                chunk = os.pread(self._fd, min(_CHUNK, self._size - off), off)
                _write_all(fd, chunk)
                off += len(chunk)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self._rd = len(_MAGIC)
        self._size = len(_MAGIC) + len(recs) + len(tail_seg) + unread
        self._rstate = None
        if not unread:
            self._winst, self._wseq = instance, seq0 + written
        self.pending += written
        return written

    def flush(self) -> None:
        """Write the buffer; if that fails (disk full), none of its events stay and all count as lost.

        A partial write would leave a torn record that the next read cuts off anyway, together with
        whole records before it that were already counted: cutting back to the last flush keeps the
        count exact."""
        if not self._wbuf:
            return
        buf, count = self._wbuf, self._wcount
        self._wbuf, self._wcount = bytearray(), 0
        try:
            _write_all(self._fd, buf)
        except OSError:
            self._size -= len(buf)
            self.pending -= count
            self.lost += count
            self._winst, self._wseq = "", -1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise

    # -- reading --------------------------------------------------------------------------------

    def read(self, max_events: int) -> SpoolRead | None:
        """The next batch: up to ``max_events`` consecutive events of one segment, or None at the end."""
        self.flush()
        start, state = self._rd, self._rstate
        instance, seq = state if state is not None else (f"orphan-{uuid.uuid4().hex[:12]}", 0)
        events: list[dict[str, str]] = []
        seq0 = seq
        end = start
        for _off, nxt, payload in self._scan(start, self._size):
            if payload[:1] == b"S":
                if events:
                    break
                seq = seq0 = _SEG.unpack_from(payload, 1)[0]
                instance = payload[1 + _SEG.size:].decode()
            else:
                try:
                    events.append(_decode_event(payload))
                except (ValueError, TypeError, AttributeError, hiredis.ProtocolError):
                    log.error("spool %s: undecodable event at offset %d replaced by an empty one", self.path, _off)
                    events.append({})
                seq += 1
            end = nxt
            if len(events) >= max_events:
                break
        if self._bad_at >= 0:
            log.error("spool %s: corrupt record at offset %d; discarding the %d bytes after it",
                      self.path, self._bad_at, self._size - self._bad_at)
            os.ftruncate(self._fd, self._bad_at)
            self._size = self._bad_at
            self._winst, self._wseq = "", -1
        self._rd = end
        self._rstate = (instance, seq)
        if not events:
            return None
        return SpoolRead(instance, seq0, events, start, state, end)

    def rewind(self, batch: SpoolRead) -> None:
        """The batch did not make it: read it again next time."""
        self._rd = batch.start
        self._rstate = batch.start_state

    def consumed(self, batch: SpoolRead) -> None:
        self.pending -= len(batch.events)

    def reset(self) -> None:
        """Everything was replayed: empty the file so it does not grow for ever."""
        self.flush()
        os.ftruncate(self._fd, len(_MAGIC))
        self._size = self._rd = len(_MAGIC)
        self._rstate = None
        self._winst, self._wseq = "", -1
        self.pending = 0

    def _scan(self, off: int, end: int) -> Iterator[tuple[int, int, bytes]]:
        """(offset, next offset, payload) of each valid record in [off, end); sets _scan_end, _bad_at."""
        self._bad_at = -1
        self._scan_end = off
        chunk, base = b"", off
        while off < end:
            rel = off - base
            if rel + _REC.size > len(chunk):
                chunk, base, rel = os.pread(self._fd, min(_CHUNK, end - off), off), off, 0
                if len(chunk) < _REC.size:
                    self._bad_at = off
                    return
            length, crc = _REC.unpack_from(chunk, rel)
            stop = off + _REC.size + length
            if stop > end:
                self._bad_at = off
                return
            if rel + _REC.size + length > len(chunk):
                chunk, base, rel = os.pread(self._fd, min(max(_CHUNK, _REC.size + length), end - off), off), off, 0
            payload = chunk[rel + _REC.size:rel + _REC.size + length]
            if not length or zlib.crc32(payload) != crc:
                self._bad_at = off
                return
            self._scan_end = stop
            yield off, stop, payload
            off = stop


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- Redis Cluster --------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384
_ASKING = hiredis.pack_command(("ASKING",))
_CLUSTER_SLOTS = hiredis.pack_command(("CLUSTER", "SLOTS"))


def _hash_tag(key: bytes) -> bytes | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key: a non-empty first ``{…}``."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return None


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hash tag or of the whole key)."""
    raw = key.encode("utf-8", "surrogateescape")
    tag = _hash_tag(raw)
    return binascii.crc_hqx(raw if tag is None else tag, 0) % CLUSTER_SLOTS


def marker_base(prefix: str, stream: str, tag: str) -> str:
    """The marker keys' name for ``stream`` up to the instance id, chosen to be in the stream's slot.

    The script touches the stream and the marker, so on a cluster both must share a slot (else
    CROSSSLOT), and then MIGRATE moves them together.  The usual name ``<prefix>:sink:{<tag>}:``
    does that whenever the prefix has no braces (``tag`` is the stream's hash tag, or the whole
    stream name when it has none); else the name starts with a number in braces that hashes to the
    stream's slot (every slot has one below 110,000).  The hash tag must lie inside the base, so
    the instance id appended to it cannot move the key to another slot.
    """
    slot = key_slot(stream)
    base = f"{prefix}:sink:{{{tag}}}:"
    if _hash_tag(base.encode("utf-8", "surrogateescape")) is not None and key_slot(base) == slot:
        return base
    n = 0
    while key_slot(f"{{{n}}}") != slot:
        n += 1
    return f"{{{n}}}:{prefix}:sink:"


def _address(reply: str, default_host: str) -> tuple[str, int]:
    """Host and port from a redirection ('MOVED <slot> <host>:<port>', same for ASK); an empty host is the seed's."""
    host, _, port = reply.split()[2].rpartition(":")
    return host.strip("[]") or default_host, int(port)


# -- Redis connection -----------------------------------------------------------------------------

class RedisReplyError(Exception):
    """Redis answered a command with an error."""


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect, from a redis://, rediss:// or unix:// URL (redis-py's parse_url)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    display: str = ""

    @classmethod
    def from_url(cls, url: str, ssl_context: ssl.SSLContext | None = None) -> RedisTarget:
        kw = parse_url(url)
        tls = url.startswith("rediss://")
        context = None
        if tls:
            context = ssl_context or _ssl_context(kw)
        host, port, path = kw.get("host", "127.0.0.1"), int(kw.get("port", 6379)), kw.get("path")
        db = int(kw.get("db", 0))
        user = kw.get("username")
        where = path or f"{host}:{port}"
        auth = f"{user or ''}:***@" if kw.get("password") else (f"{user}@" if user else "")
        scheme = "unix" if path else ("rediss" if tls else "redis")
        display = f"{scheme}://{auth}{where}" + (f"?db={db}" if path else f"/{db}")
        return cls(host, port, path, db, user, kw.get("password"), context, display)


def _ssl_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """A client TLS context from redis-py's URL parameters (ssl_cert_reqs, ssl_ca_certs, ssl_certfile …)."""
    reqs = kw.get("ssl_cert_reqs", "required")
    mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}.get(reqs)
    if mode is None:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    context = ssl.create_default_context()
    check = kw.get("ssl_check_hostname", True)
    context.check_hostname = bool(check) and mode != ssl.CERT_NONE
    context.verify_mode = mode
    if kw.get("ssl_ca_certs") or kw.get("ssl_ca_path"):
        context.load_verify_locations(cafile=kw.get("ssl_ca_certs"), capath=kw.get("ssl_ca_path"))
    if kw.get("ssl_certfile"):
        context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"), kw.get("ssl_password"))
    return context


class RedisConnection(asyncio.Protocol):
    """A bare RESP connection: raw bytes out, replies parsed by hiredis, one future per reply.

    redis-py's connection reads one reply per coroutine call; the sink needs neither that nor its
    pool, only "write these bytes, give me the next reply".  A connection that timed out is
    closed, never reused, so replies cannot get out of step with their futures.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.on_lost: Any = None  # called once when the peer goes away
        self.node: RedisTarget | None = None  # where it goes, when the owner needs to know (cluster redirections)
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future] = deque()

    @classmethod
    async def open(cls, target: RedisTarget, timeout: float, name: str = "") -> RedisConnection:
        """Connect, AUTH, SELECT, name the client and load the script, all within ``timeout``."""
        loop = asyncio.get_running_loop()
        conn: RedisConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                if target.path:
                    _, conn = await loop.create_unix_connection(cls, target.path)
                else:
                    _, conn = await loop.create_connection(
                        cls, target.host, target.port, ssl=target.ssl,
                        server_hostname=target.host if target.ssl is not None else None)
                commands: list[tuple] = []
                if target.password is not None:
                    commands.append(("AUTH", target.username, target.password) if target.username
                                    else ("AUTH", target.password))
                if target.db:
                    commands.append(("SELECT", target.db))
                if name:
                    commands.append(("CLIENT", "SETNAME", name))
                commands.append(("SCRIPT", "LOAD", SCRIPT))
                replies = await conn.requests(b"".join(map(hiredis.pack_command, commands)), len(commands))
            for command, reply in zip(commands, replies, strict=True):
                if isinstance(reply, hiredis.ReplyError) and command[0] != "CLIENT":
                    raise RedisReplyError(f"{command[0]} failed: {reply}")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"garbled reply from redis: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))
        if self.on_lost is not None:
            self.on_lost()

    def _fail(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def requests(self, data: bytes, replies: int) -> list[Any]:
        """Write pipelined commands; await their ``replies`` replies (error replies are returned)."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection to redis is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiters.extend(futures)
        self.transport.write(data)
        return [await fut for fut in futures]

    async def request(self, data: bytes) -> Any:
        if self.closed or self.transport is None:
            raise ConnectionError("connection to redis is closed")
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.transport.write(data)
        return await fut

    def close(self) -> None:
        """Drop the connection now (abort: a paused server must not hold our buffered bytes)."""
        self.closed = True
        self.on_lost = None
        if self.transport is not None:
            self.transport.abort()
        self._fail(ConnectionError("connection to redis closed"))


# -- the sink -------------------------------------------------------------------------------------

class _Batch:
    __slots__ = ("data", "events", "marker", "seq0", "spool")

    def __init__(self, marker: str, seq0: int, events: list[dict[str, str]], spool: SpoolRead | None) -> None:
        self.marker = marker
        self.seq0 = seq0
        self.events = events
        self.spool = spool
        self.data = b""


class _Lane:
    """One stream: its queue, spool, sequence numbers, connection and sender task."""

    def __init__(self, sink: StreamSink, stream: str, tag: str, spool_path: str | os.PathLike | None) -> None:
        self.sink = sink
        self.stream = stream
        self._marker_base = marker_base(sink.prefix, stream, tag)
        self.marker = self._marker_base + sink.instance
        self.slot = key_slot(stream)
        self.spool = Spool(spool_path, sink.spool_max_bytes) if spool_path is not None else None
        self._max_queue = sink.max_queue
        self._queue: list[dict[str, str]] = []
        self._spooling = False  # new events go to the spool (it holds older ones, or Redis is away)
        self._spilling = False  # the sender is moving the queue into the spool
        self._idle = False  # the sender waits for put() to wake it
        self._sent_at = 0.0  # perf_counter() when the last batch went out
        self._wakeup: asyncio.Future | None = None
        self._qseq = 0  # sequence number of _queue[0]
        self._pseq = 0  # sequence number of the next event put while spooling
        self._head: _Batch | None = None  # the batch being sent, kept until Redis confirms it
        self._conn: RedisConnection | None = None
        self._node: RedisTarget | None = None  # Redis Cluster: the node serving this stream's slot (None: the seed)
        self._ask_conn: RedisConnection | None = None  # Redis Cluster: to the node an ASK pointed to
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._flush_scheduled = False
        self.up = False
        self._down_since: float | None = None
        self._down_reason = ""
        self._spool_full_logged = False
        self._queue_full_logged = False
        # counters, read by SinkCollector
        self.sent = 0
        self.spooled = 0
        self.replayed = 0
        self.dropped = 0
        self.deduplicated = 0
        self.trimmed_unread = 0
        self._trim_logged = 0.0
        self.send_errors = 0
        self.batches = 0
        self.connects = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

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
            self.dropped += 1
            if not self._queue_full_logged:
                self._queue_full_logged = True
                log.error("sink %s: memory queue full (%d events) and no working spool; dropping events",
                          self.stream, self._max_queue)
            return
        self._spooling = True  # from now on the spool holds everything newer than the queue
        self._pseq = self._qseq + len(self._queue)
        self._spool_put(fields)

    def _spool_put(self, fields: dict[str, str]) -> None:
        sp = self.spool
        if sp is None or sp.broken or sp.closed:
            self.dropped += 1
            return
        try:
            ok = sp.append(self.sink.instance, self._pseq, fields)
        except OSError as exc:  # raised by the flush after the event was buffered: it is among sp.lost
            self._pseq += 1
            self.spooled += 1
            self._spool_failed(exc)
            return
        except Exception:  # not a dict: put() must not raise into a protocol callback
            self.dropped += 1
            log.error("sink %s: dropped an event that is not a dict: %.100r", self.stream, fields)
            return
        if ok:
            self._pseq += 1
            self.spooled += 1
            if not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_spool)
        else:
            self.dropped += 1
            if not self._spool_full_logged:
                self._spool_full_logged = True
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
            self.dropped += sp.lost
            sp.lost = 0

    # -- state ------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        head = self._head
        return len(self._queue) + (len(head.events) if head is not None and head.spool is None else 0)

    @property
    def where(self) -> str:
        """The Redis this lane writes to, for logs and readiness."""
        return (self._node or self.sink.target).display

    def readiness(self) -> str | None:
        if self.up:
            return None
        sp = self.spool
        reason = self._down_reason or "connecting"
        if sp is None:
            return f"redis {self.where} unreachable ({reason}) and no spool configured"
        if sp.broken:
            return f"redis {self.where} unreachable ({reason}) and spool failed: {sp.broken}"
        if sp.closed:
            return f"redis {self.where} unreachable ({reason}) and the sink is not running"
        if self._spool_full_logged:
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
        self._drop_conn()
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
            self.spooled += written
            self.dropped += len(events) - written
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
                self.send_errors += 1
                self._drop_conn()
                if self._closing:
                    return
                await self._pause(1.0)

    async def _send_loop(self) -> None:
        sink = self.sink
        delay = sink.backoff_min
        hops = 0  # MOVED/ASK redirections since the last confirmed batch or pause (a cluster in flux must not spin)
        while True:
            if self._conn is None or self._conn.closed:
                if self._conn is not None:
                    self._drop_conn()
                    await self._went_down("connection closed by redis")
                node = self._node or sink.target
                try:
                    conn = await RedisConnection.open(node, sink.connect_timeout, f"{sink.client_name}-{sink.instance}")
                except (OSError, TimeoutError, RedisReplyError, ConnectionError, ssl.SSLError, EOFError) as exc:
                    await self._went_down(_describe(exc))
                    if self._closing:
                        return
                    await self._relocate(node)
                    await self._pause(delay)
                    delay = min(delay * 2, sink.backoff_max)
                    hops = 0
                    continue
                conn.on_lost = self._wake
                self._conn = conn
                self.connects += 1
                delay = sink.backoff_min
                self._came_up()
            if (self._head is None and sink.linger and 0 < len(self._queue) < sink.batch_max
                    and not self._spooling and not self._closing):
                rest = self._sent_at + sink.linger - time.perf_counter()
                if rest > 0:  # at most one round trip per linger: its fixed costs are shared by more events
                    await asyncio.sleep(rest)
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
                async with asyncio.timeout(sink.send_timeout):
                    if sink.wait_replicas:
                        reply, copies = await self._conn.requests(batch.data + sink._wait, 2)
                        self._check_replicated(reply, copies)
                    else:
                        reply = await self._conn.request(batch.data)
                    if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("ASK ") and hops < 5:
                        hops += 1
                        reply = await self._asked(str(reply), batch)
            except (ConnectionError, OSError, TimeoutError, RedisReplyError, EOFError) as exc:
                self.send_errors += 1
                self._drop_conn()
                await self._went_down(_describe(exc, "no reply"))
                if not self._closing:
                    await self._pause(delay)
                    delay = min(delay * 2, sink.backoff_max)
                hops = 0
                continue
            if isinstance(reply, hiredis.ReplyError):
                self.send_errors += 1
                self._drop_conn()
                text = str(reply)
                if text.startswith("NOSCRIPT"):  # SCRIPT FLUSH or a failover: load it again
                    continue
                if text.startswith("MOVED "):  # Redis Cluster: the slot's owner is another node from now on
                    self._node = self._moved(text)
                    if hops < 5:
                        hops += 1
                        continue
                # TRYAGAIN (keys of the slot half migrated), CLUSTERDOWN, LOADING, endless redirections …:
                # spool and retry later; the marker makes the retry safe.
                await self._went_down(f"redis error: {text}")
                if self._closing:
                    return
                await self._pause(delay)
                delay = min(delay * 2, sink.backoff_max)
                hops = 0
                continue
            hops = 0
            elapsed = time.perf_counter() - started
            self.latency_counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            self.latency_sum += elapsed
            self._head = None
            n = len(batch.events)
            self.sent += n
            self.batches += 1
            if isinstance(reply, list):
                self._trimmed_unread(reply[1:])
                reply = reply[0]
            self.deduplicated += int(reply)
            if batch.spool is not None:
                self.replayed += n
                self.spool.consumed(batch.spool)  # type: ignore[union-attr]

    def _trimmed_unread(self, pairs: list[Any]) -> None:
        """Statements the stream cap (stream_maxlen) removed before a consumer group read them."""
        counts = {bytes(pairs[k]).decode(errors="replace"): int(pairs[k + 1]) for k in range(0, len(pairs) - 1, 2)}
        self.trimmed_unread += sum(counts.values())
        now = time.monotonic()
        if now - self._trim_logged >= 60:  # once a minute at most: it goes on for as long as a group lags
            self._trim_logged = now
            log.warning("stream %s is at its cap (stream_maxlen %d): a trim removed statements before these "
                        "consumer groups read them: %s (totals per group: HGETALL %s:trimmed). Start more "
                        "analyzers, raise stream_maxlen, or destroy a group nobody reads any more",
                        self.stream, self.sink.maxlen, ", ".join(f"{g} {n}" for g, n in counts.items()),
                        self.stream)

    def _drop_conn(self) -> None:
        """Close the connections (a closed one is never reused, so replies cannot get out of step)."""
        for conn in (self._conn, self._ask_conn):
            if conn is not None:
                conn.close()
        self._conn = self._ask_conn = None

    def _moved(self, reply: str) -> RedisTarget:
        """'MOVED <slot> <host>:<port>': the configured target's credentials and TLS, at that node."""
        node = self.sink.cluster_node(*_address(reply, self.sink.target.host))
        if node != self._node:
            log.info("sink %s: redis cluster slot %s is served by %s:%s", self.stream, reply.split()[1],
                     node.host, node.port)
        return node

    async def _asked(self, reply: str, batch: _Batch) -> Any:
        """'ASK <slot> <host>:<port>': the slot is migrating and our keys have left; this batch goes there.

        Only this batch, after ASKING (good for one command): the slot's owner stays the one we
        know until a MOVED says otherwise.  The connection is kept while ASKs point to the same node.
        """
        node = self.sink.cluster_node(*_address(reply, self.sink.target.host))
        conn = self._ask_conn
        if conn is None or conn.closed or conn.node != node:
            if conn is not None:
                conn.close()
            log.info("sink %s: redis cluster slot %s is migrating; following ASK to %s:%s", self.stream,
                     reply.split()[1], node.host, node.port)
            conn = await RedisConnection.open(node, self.sink.connect_timeout,
                                              f"{self.sink.client_name}-{self.sink.instance}")
            conn.node = node
            self._ask_conn = conn
        if not self.sink.wait_replicas:
            asking, result = await conn.requests(_ASKING + batch.data, 2)
            return asking if isinstance(asking, hiredis.ReplyError) else result
        asking, result, copies = await conn.requests(_ASKING + batch.data + self.sink._wait, 3)
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
        self._node = await self.sink.slot_owner(self.slot, failed) if self.sink.cluster_nodes else None

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
            self.dropped += 1
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
        self._spool_full_logged = False
        log.info("sink %s: spool drained (%d events replayed so far); back to sending from memory",
                 self.stream, self.replayed)

    def _came_up(self) -> None:
        self.up = True
        self._queue_full_logged = False
        sp = self.spool
        backlog = f"; {sp.pending} spooled events to replay" if sp is not None and sp.pending else ""
        if self._down_since is not None:
            log.info("sink %s: redis %s is back after %.1fs%s", self.stream, self.where,
                     time.monotonic() - self._down_since, backlog)
        elif self.connects == 1:
            log.info("sink %s: writing %s entries to redis %s%s", self.stream,
                     self.sink.entry, self.where, backlog)
        self._down_since = None
        self._down_reason = ""

    async def _went_down(self, reason: str) -> None:
        was_up = self.up or self._down_since is None
        self.up = False
        self._down_reason = reason
        if was_up:
            self._down_since = time.monotonic()
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
        self.spooled += spooled
        self.dropped += pos - spooled
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


def _describe(exc: BaseException, empty: str = "timed out") -> str:
    text = str(exc) if not isinstance(exc, OSError) or not exc.strerror else exc.strerror
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__}: {empty}"


class StreamSink:
    """Batched, idempotent, never-blocking writer of statement events to Redis Streams.

    Parameters (all but ``url`` and ``prefix`` keyword-only):

    - ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS; redis-py query
      parameters ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
      ``ssl_check_hostname``) or ``unix:///path?db=N``.  For a Redis Cluster: one node or several
      (``redis://h1:p1,h2:p2``, tried in turn while the first does not answer); the others are found
      through MOVED, ASK and CLUSTER SLOTS.
    - ``prefix``: key prefix; the stream is ``<prefix>:statements``.
    - ``maxlen``: ``MAXLEN ~`` bound of the stream (0 = unbounded).  Default 1,000,000.
    - ``max_queue``: events held in memory before new ones go to the spool.  Default 100,000.
    - ``linger``: shortest time between two batches of a lane unless a full batch waits, so that
      events gather (fewer round trips and script calls: the proxy and Redis each spend ~5 µs less
      per event under load); costs up to that much latency to the stream.  0 sends at once.
    - ``batch_max``: events per round trip.  Default 1000 (keeps Redis busy ~4 ms per batch).
    - ``entry``: ``bundled`` (up to BUNDLE_MAX events an entry, one field; default), ``packed`` (one
      event an entry, one field) or ``flat`` (one field per event field); see proxy.events.
    - ``spool_path``: spool file (one per process; None = no spool: overflow is dropped).
    - ``spool_max_bytes``: unreplayed spool data kept before dropping.  Default 1 GiB.
    - ``shards``: number of streams (``<prefix>:statements:{i}``) chosen by ``route``.  Default 1.
    - ``connect_timeout``: connect + TLS + AUTH/SELECT, seconds.  Default 5.
    - ``send_timeout``: a batch's round trip before Redis counts as unreachable.  Default 5.
    - ``backoff_min``/``backoff_max``: reconnect delay, doubling.  Default 0.1 / 5 seconds.
    - ``ssl_context``: overrides the TLS settings taken from a rediss:// URL.
    - ``client_name``: CLIENT SETNAME prefix (the instance id is appended).
    - ``marker_ttl``: seconds an idempotency marker lives after its last batch; a spool replayed later
      than that may duplicate its one in-doubt batch.  Default 7 days.
    - ``wait_replicas``: replicas that must hold a batch (Redis WAIT, ``wait_timeout`` seconds) before it
      counts as sent; fewer is handled like an unreachable Redis (spool, retry; the marker makes the
      resend safe).  With 1, a failover to a replica loses no confirmed event; without a replica
      attached, events wait in the spool.  Default 0: the primary's reply is enough.

    Use: ``await sink.start()``; ``sink.put(fields, route)`` from anywhere on the loop's thread;
    ``await sink.close(timeout)`` at shutdown.  ``readiness()`` suits MetricsServer's ``ready``.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fasterdata", *,
                 maxlen: int = 1_000_000, max_queue: int = 100_000, batch_max: int = 1000, linger: float = 0.005,
                 spool_path: str | os.PathLike | None = None, spool_max_bytes: int = 1 << 30,
                 shards: int = 1, connect_timeout: float = 5.0, send_timeout: float = 5.0,
                 backoff_min: float = 0.1, backoff_max: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, client_name: str = "fasterdata-sink",
                 marker_ttl: int = 7 * 86400, wait_replicas: int = 0, wait_timeout: float = 1.0,
                 entry: str = "bundled") -> None:
        if entry not in ENTRY_FORMATS:
            raise ValueError(f"entry must be one of {', '.join(ENTRY_FORMATS)}")
        if shards < 1 or max_queue < 1 or batch_max < 1 or maxlen < 0 or spool_max_bytes < 1:
            raise ValueError("shards, max_queue, batch_max and spool_max_bytes must be positive, maxlen >= 0")
        urls = one_url_per_host(url)
        self.target = RedisTarget.from_url(urls[0], ssl_context)
        self.prefix = prefix
        self.maxlen = maxlen
        self.max_queue = max_queue
        self.batch_max = batch_max
        self.linger = linger
        self.entry = entry
        self.spool_max_bytes = spool_max_bytes
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.client_name = client_name
        self.marker_ttl = marker_ttl
        self.wait_replicas = wait_replicas
        self._wait = hiredis.pack_command(("WAIT", wait_replicas, max(1, int(wait_timeout * 1000))))
        self.instance = uuid.uuid4().hex[:16]
        if shards == 1:
            stream = f"{prefix}:statements"
            self.lanes = [_Lane(self, stream, stream, spool_path)]
            self.put = self.lanes[0].put  # type: ignore[method-assign]  # skip one call on the hot path
        else:
            self.lanes = [_Lane(self, f"{prefix}:statements:{{{i}}}", str(i),
                                None if spool_path is None else f"{os.fspath(spool_path)}.{i}")
                          for i in range(shards)]
        self.streams = [lane.stream for lane in self.lanes]
        self._shards = shards
        # Redis Cluster nodes heard of (seed nodes in the URL, MOVED, ASK, CLUSTER SLOTS), by address; empty on
        # a plain Redis.
        self.cluster_nodes: dict[tuple[str, int], RedisTarget] = {}
        for seed in urls[1:]:
            node = RedisTarget.from_url(seed, ssl_context)
            self.cluster_node(node.host, node.port)

    def cluster_node(self, host: str, port: int) -> RedisTarget:
        """The cluster node at host:port, reached with the configured target's credentials and TLS."""
        node = self.cluster_nodes.get((host, port))
        if node is None:
            display = f"{self.target.display} -> {host}:{port}"
            node = replace(self.target, host=host, port=port, path=None, display=display)
            self.cluster_nodes[(host, port)] = node
        return node

    async def slot_owner(self, slot: int, failed: RedisTarget) -> RedisTarget | None:
        """Which node serves ``slot``, after CLUSTER SLOTS from the first other node that answers.

        The seed first, then every node heard of; not ``failed``, which just did not answer.  None when
        no node answers or Redis is not a cluster.
        """
        seen = {(self.target.host, self.target.port)}
        others = [n for n in self.cluster_nodes.values() if (n.host, n.port) not in seen]
        ask = [n for n in (self.target, *others) if (n.host, n.port) != (failed.host, failed.port)]
        for node in ask:
            try:
                conn = await RedisConnection.open(node, self.connect_timeout)
                try:
                    async with asyncio.timeout(self.send_timeout):
                        reply = await conn.request(_CLUSTER_SLOTS)
                finally:
                    conn.close()
            except (OSError, TimeoutError, RedisReplyError, ConnectionError, EOFError):
                continue
            if isinstance(reply, hiredis.ReplyError) or not isinstance(reply, list):
                return None
            owner = None
            for entry in reply:  # [first slot, last slot, [host, port, id, …] of the master, replicas …]
                host = entry[2][0].decode() if isinstance(entry[2][0], bytes) else ""
                master = self.cluster_node(host if host not in ("", "?") else node.host, int(entry[2][1]))
                if entry[0] <= slot <= entry[1]:
                    owner = master
            return owner
        return None

    def put(self, fields: dict[str, str], route: str = "") -> None:
        """Queue one event (flat str → str); ``route`` (session id) picks the stream when sharded."""
        self.lanes[hash(route) % self._shards].put(fields)

    async def start(self) -> None:
        """Open the spool(s) (raises OSError/SpoolLocked if unusable) and start the sender task(s)."""
        for lane in self.lanes:
            lane.open_spool()
        for lane in self.lanes:
            lane.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued; after ``timeout`` seconds (or at once if Redis is away) spool the rest."""
        await asyncio.gather(*(lane.close(timeout) for lane in self.lanes))

    def readiness(self) -> str | None:
        """None when events have somewhere to go (Redis, or a working spool); else why not."""
        for lane in self.lanes:
            problem = lane.readiness()
            if problem is not None:
                return problem
        return None

    @property
    def ready(self) -> bool:
        return self.readiness() is None

    @property
    def connected(self) -> bool:
        return all(lane.up for lane in self.lanes)

    def _sum(self, name: str) -> int:
        return sum(getattr(lane, name) for lane in self.lanes)

    queued = property(lambda self: self._sum("queued"), doc="Events in memory, not yet confirmed")
    sent = property(lambda self: self._sum("sent"), doc="Events Redis confirmed (new or already there)")
    spooled = property(lambda self: self._sum("spooled"), doc="Events written to the spool")
    replayed = property(lambda self: self._sum("replayed"), doc="Spooled events Redis confirmed")
    dropped = property(lambda self: self._sum("dropped"), doc="Events lost: spool full or absent")
    deduplicated = property(lambda self: self._sum("deduplicated"),
                            doc="Events resent after a lost reply that Redis already had (skipped)")
    trimmed_unread = property(lambda self: self._sum("trimmed_unread"),
                              doc="Statements the stream cap removed before a consumer group read them")
    send_errors = property(lambda self: self._sum("send_errors"), doc="Failed batch round trips")
    batches = property(lambda self: self._sum("batches"), doc="Batches Redis confirmed")

    @property
    def spool_events(self) -> int:
        return sum(lane.spool.pending for lane in self.lanes if lane.spool is not None)

    @property
    def spool_bytes(self) -> int:
        return sum(lane.spool.unread for lane in self.lanes if lane.spool is not None and not lane.spool.closed)


class SinkCollector(Collector):
    """Prometheus view of a StreamSink's plain counters, read at scrape time."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        s = self.sink
        yield GaugeMetricFamily("fasterdata_sink_queued", "Events in memory awaiting Redis", value=s.queued)
        yield GaugeMetricFamily("fasterdata_sink_spool_events", "Events in the spool awaiting replay",
                                value=s.spool_events)
        yield GaugeMetricFamily("fasterdata_sink_spool_bytes", "Unreplayed bytes in the spool", value=s.spool_bytes)
        yield GaugeMetricFamily("fasterdata_sink_redis_up", "1 when every stream's connection is up",
                                value=int(s.connected))
        for name, doc in (("sent", "Events confirmed by Redis"),
                          ("spooled", "Events written to the spool"),
                          ("replayed", "Spooled events confirmed by Redis"),
                          ("dropped", "Events lost because the spool was full or absent"),
                          ("deduplicated", "Resent events Redis already had"),
                          ("trimmed_unread", "Statements this proxy's stream trims (stream_maxlen) removed before "
                                             "a consumer group read them, summed over groups"),
                          ("send_errors", "Batch round trips that failed or timed out"),
                          ("batches", "Batches confirmed by Redis")):
            yield CounterMetricFamily(f"fasterdata_sink_{name}", doc, value=getattr(s, name))
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        for lane in s.lanes:
            counts = [a + b for a, b in zip(counts, lane.latency_counts, strict=True)]
            total += lane.latency_sum
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("fasterdata_sink_send_seconds", "Batch round trip to Redis",
                                    buckets=buckets, sum_value=total)


def sink_for(settings: ProxySettings, spool_path: str | None) -> StreamSink:
    """The sink a proxy process (or its capture helper) runs with these settings."""
    return StreamSink(settings.redis, settings.prefix, maxlen=settings.stream_maxlen, max_queue=settings.queue_max,
                      spool_path=spool_path, spool_max_bytes=settings.spool_max_bytes, shards=settings.stream_shards,
                      wait_replicas=settings.redis_wait_replicas, wait_timeout=settings.redis_wait_timeout,
                      entry=settings.stream_entry)
