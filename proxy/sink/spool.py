"""The spool: an append-only file of events that could not go to Redis yet, read back in order.

Each event keeps its sequence number (a segment record names the instance and the first number), so a
replayed batch is the same batch the marker knows, whichever process replays it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import hiredis

from .encoding import as_bytes

log = logging.getLogger("fasterdata.sink")

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
        return _record(b"R" + hiredis.pack_command(tuple(map(as_bytes, chain.from_iterable(fields.items())))))
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

