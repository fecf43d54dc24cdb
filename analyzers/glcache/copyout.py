"""Read a `COPY … TO STDOUT` (text or CSV format) straight off the socket in large blocks.

libpq hands COPY data back one row per call, so any driver loop costs a Python object per row. Instead we
send the query through libpq (which did the connecting, authentication and settings) and then read the
raw protocol bytes ourselves: blocks of megabytes, in which the 5-byte CopyData headers are found with
numpy (vectorised, verified as an unbroken chain) and overwritten in place with ``xxxxx``. The query puts
an empty first column in front of every row, so each header becomes a harmless first field and the block
is plain delimited text that pyarrow's CSV reader parses without another copy. TLS or GSS-encrypted
connections cannot be read raw; there the slower libpq path is used, which yields the same blocks.

The connection is consumed: after the COPY it is closed.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg

PAD = b"xxxxx"
_RFQ = b"Z\x00\x00\x00\x05"
_HDR = struct.Struct("!cI")
_NL = 10
_LOWAT = 256 << 10
_LOWAT_WAIT = 0.002
_D = ord("d")
_BACKSLASH = ord("\\")
_SPARE = 4
"""Receive buffers kept for the next load: fresh ones are page-faulted (and zeroed) again each time."""
_spare: list[tuple[np.ndarray, np.ndarray]] = []
_spare_lock = threading.Lock()


class CopyError(Exception):
    """The server reported an error during COPY (sqlstate and message from its ErrorResponse)."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate


@dataclass
class Block:
    """Complete COPY rows: ``data`` is delimited text; ``rows`` rows; ``newlines`` true if a value holds one;
    ``backslashes`` how many backslash bytes ``data`` holds (-1: not counted)."""

    data: memoryview | bytes
    rows: int
    newlines: bool
    backslashes: int = -1


def _error(body: bytes) -> CopyError:
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return CopyError(fields.get("C", "XX000"), fields.get("M", "unknown error"))


def _walk_sequential(buf: np.ndarray, pos: int, end: int) -> tuple[list[int], int]:
    """Frame starts from ``pos`` while they are complete CopyData messages (the rare slow path)."""
    starts = []
    while pos + 5 <= end and buf[pos] == _D:
        _, length = _HDR.unpack_from(buf, pos)
        if pos + 1 + length > end:
            break
        starts.append(pos)
        pos += 1 + length
    return starts, pos


def _walk(arr: np.ndarray, pos: int, end: int, scratch: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Vectorised: complete CopyData frames in buf[pos:end] → (starts, end of last, values hold newlines).
    ``scratch`` (bool, at least as long as the buffer) takes the byte comparison instead of a new array."""
    view = arr[pos:end]
    newlines = np.flatnonzero(np.equal(view, _NL, out=scratch[:len(view)]))
    cand = np.concatenate(([0], newlines + 1))
    cand = cand[cand + 5 <= len(view)]
    cand = cand[view[cand] == _D]
    if len(cand) == 0:
        return cand, pos, False
    length = (
        (view[cand + 1].astype(np.int64) << 24)
        | (view[cand + 2].astype(np.int64) << 16)
        | (view[cand + 3].astype(np.int64) << 8)
        | view[cand + 4].astype(np.int64)
    )
    nxt = cand + 1 + length
    if cand[0] == 0 and np.array_equal(nxt[:-1], cand[1:]):
        complete = cand if nxt[-1] <= len(view) else cand[:-1]
        if not len(complete):
            return complete, pos, False
        stop = int(nxt[len(complete) - 1])
        inner = int(np.searchsorted(newlines, stop))
        if inner != len(complete):  # length bytes equal to '\n' are not newlines in values
            inner -= sum(int(np.count_nonzero(view[complete + k] == _NL)) for k in range(1, 5))
        return complete + pos, pos + stop, inner != len(complete)
    # A newline followed by 'd' inside a quoted value broke the chain: walk this block frame by frame.
    starts, stop = _walk_sequential(arr, pos, end)
    return np.asarray(starts, dtype=np.int64), stop, True


class _Raw:
    """Protocol reader over the connection's socket (a dup, so libpq's descriptor stays valid).

    One receive buffer is reused: each block's complete rows are copied out (a memcpy, cheaper than a
    fresh zeroed buffer per block) and the partial tail moves to the front. The buffer and its scratch
    array come from, and go back to, a small process-wide spare list.
    """

    def __init__(self, conn: psycopg.Connection, block_bytes: int):
        self.sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        # Wake up for 256 kB at a time rather than for every 16 kB segment (fewer recv calls); the
        # timeout catches the end of the response, which is smaller.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _LOWAT)
        self.sock.settimeout(_LOWAT_WAIT)
        self.block = block_bytes
        self.buf, self.scratch = _take(block_bytes * 2)
        self.filled = 0
        self.done = False
        self.error: CopyError | None = None

    def close(self) -> None:
        self.sock.close()
        with _spare_lock:
            if len(_spare) < _SPARE and len(self.buf) == self.block * 2:  # not one grown for a huge row
                _spare.append((self.buf, self.scratch))

    def _fill(self) -> None:
        """Receive until a block's worth is buffered or the response ended (ReadyForQuery at the tail)."""
        view = memoryview(self.buf)
        sock = self.sock
        while self.filled < len(self.buf):
            try:
                n = sock.recv_into(view[self.filled:])
            except TimeoutError:  # less than the low-water mark is waiting: take what there is
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                try:
                    n = sock.recv_into(view[self.filled:])
                except TimeoutError:
                    continue
                finally:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _LOWAT)
            if n == 0:
                raise CopyError("08006", "server closed the connection during COPY")
            self.filled += n
            if self.filled >= self.block or view[self.filled - 6:self.filled - 1] == _RFQ:
                return

    def _other(self, pos: int) -> int:
        """Handle complete non-CopyData messages at pos; return the new pos (unchanged if incomplete)."""
        buf = self.buf
        while pos + 5 <= self.filled and buf[pos] != _D:
            kind, length = _HDR.unpack_from(buf, pos)
            if pos + 1 + length > self.filled:
                break
            body = buf[pos + 5:pos + 1 + length].tobytes()
            pos += 1 + length
            if kind == b"H" and body[:1] != b"\x00":
                self.error = CopyError("0A000", "COPY answered in binary format; text was asked for")
            elif kind == b"E":
                self.error = _error(body)
            elif kind == b"Z":
                self.done = True
                return pos
        return pos

    def blocks(self) -> Iterator[Block]:
        while not self.done:
            self._fill()
            buf = self.buf
            pos = self._other(0)
            starts, stop, newlines = _walk(buf, pos, self.filled, self.scratch)
            block = None
            if len(starts):
                for k in range(5):
                    buf[starts + k] = PAD[k]
                rows = buf[starts[0]:stop]
                # Counted here, where the bytes are hot and a scratch array is at hand: the parser compares
                # the count with the NULLs it found to know whether any value holds an escape.
                slashes = int(np.count_nonzero(np.equal(rows, _BACKSLASH, out=self.scratch[:len(rows)])))
                block = Block(rows.tobytes(), len(starts), newlines, slashes)
                pos = self._other(stop)
            keep = self.filled - pos
            if pos:
                buf[:keep] = buf[pos:self.filled].copy()
                self.filled = keep
            elif self.filled == len(buf):
                grown = np.empty(len(buf) * 2, dtype=np.uint8)
                grown[:self.filled] = buf[:self.filled]
                self.buf, self.scratch = grown, np.empty(len(grown), dtype=np.bool_)
            if block is not None:
                yield block
            if self.done and self.filled:
                raise CopyError("08P01", "unexpected bytes after ReadyForQuery")
        if self.error:
            raise self.error


def _take(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A receive buffer of ``size`` bytes and its scratch array, a spare one if there is one."""
    with _spare_lock:
        for i, (buf, scratch) in enumerate(_spare):
            if len(buf) == size:
                del _spare[i]
                return buf, scratch
    return np.empty(size, dtype=np.uint8), np.empty(size, dtype=np.bool_)


def _libpq_blocks(conn: psycopg.Connection, query: bytes, block_bytes: int) -> Iterator[Block]:
    """Fallback for encrypted connections: libpq rows joined into blocks (one bytes object per row)."""
    parts: list[bytes] = []
    size = 0
    with conn.cursor() as cur, cur.copy(query) as copy:
        for row in copy:
            parts.append(bytes(row))
            size += len(row)
            if size >= block_bytes:
                data = b"".join(parts)
                yield Block(data, len(parts), data.count(b"\n") != len(parts))
                parts, size = [], 0
    if parts:
        data = b"".join(parts)
        yield Block(data, len(parts), data.count(b"\n") != len(parts))


def copy_csv_blocks(conn: psycopg.Connection, query: bytes, block_bytes: int = 4 << 20,
                    keep_open: bool = False) -> Iterator[Block]:
    """Run ``query`` (a text or CSV COPY … TO STDOUT whose first column is empty) and yield row blocks.

    The connection must be idle (in autocommit, or in a transaction, e.g. one that imported a snapshot).
    Read raw (fast) it is closed when the iterator ends; with ``keep_open`` (small re-reads on a
    long-lived connection) libpq reads it and it stays usable.
    """
    try:
        pgconn = conn.pgconn
        if keep_open or pgconn.ssl_in_use or pgconn.used_gssapi:
            yield from _libpq_blocks(conn, query, block_bytes)
            return
        raw = _Raw(conn, block_bytes)
        try:
            pgconn.send_query(query)
            while pgconn.flush():
                pass
            yield from raw.blocks()
        finally:
            raw.close()
            conn.close()
    except psycopg.Error as exc:
        raise CopyError(exc.sqlstate or "XX000", str(exc)) from exc
    finally:
        if not keep_open:
            conn.close()
