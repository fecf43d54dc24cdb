"""Sans-I/O PostgreSQL wire protocol: bytes in, messages out, for both directions.

The decoders never see a socket. The proxy forwards every chunk first and feeds a reference to
the same bytes here afterwards, so nothing in this module can delay or alter traffic.

A message is a plain ``(type, body, length)`` tuple rather than an object: the proxy decodes tens
of thousands of messages a second and allocations are its main cost. ``type`` is the message's
type byte as an int, named below (``QUERY``, ``BIND`` …: plain module-level ints, cheaper to compare
per message than enum members), or one of the negative startup codes (``STARTUP``, ``SSL_REQUEST`` …)
for the untyped packets a client sends before its StartupMessage. ``length`` is the body length announced on the
wire; ``len(body)`` is smaller when the message was larger than ``keep`` and only a prefix was kept.
Messages whose type is not in ``wanted`` are skipped by length without being buffered, which is
how DataRow bodies, CopyData and password messages pass through untouched and unread.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable

try:  # the inner loop compiled (proxy/_framescan.c); absent when the package was built without a compiler
    from ._framescan import scan as _scan
except ImportError:
    _scan = None
_Scan = Callable[[bytes | bytearray | memoryview, int, bytes, int, int, list], int]

# Untyped packets before and including the StartupMessage.
STARTUP = -1
SSL_REQUEST = -2
GSSENC_REQUEST = -3
CANCEL_REQUEST = -4

# A connection whose first byte is this starts with a TLS handshake record, not a startup packet
# (``sslnegotiation=direct``, PostgreSQL 17+): read as a length it would be hundreds of megabytes. The
# proxy looks at the first byte before anything reaches FrontendDecoder, which never sees TLS records.
TLS_HANDSHAKE_BYTE = 0x16

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3 = 3 << 16

MAX_STARTUP_PACKET = 10_000  # PostgreSQL's own limit for startup packets
DEFAULT_MAX_MESSAGE = (1 << 30) - 1  # PostgreSQL refuses larger messages too
DEFAULT_KEEP = 1 << 20

Message = tuple[int, bytes, int]

_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")
_unpack_int32 = _INT32.unpack_from
_unpack_int16 = _INT16.unpack_from

# Frontend (client → server) type bytes.
QUERY, PARSE, BIND, EXECUTE, CLOSE, DESCRIBE, SYNC, FLUSH, TERMINATE = (ord(c) for c in "QPBECDSHX")
COPY_DATA, COPY_DONE, COPY_FAIL, PASSWORD, FUNCTION_CALL = (ord(c) for c in "dcfpF")
# Backend (server → client) type bytes.
AUTH, BACKEND_KEY, PARAMETER_STATUS, READY = (ord(c) for c in "RKSZ")
COMMAND_COMPLETE, ERROR, NOTICE, EMPTY_QUERY = (ord(c) for c in "CENI")
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, PORTAL_SUSPENDED, NO_DATA = (ord(c) for c in "123sn")
PARAMETER_DESCRIPTION, ROW_DESCRIPTION, DATA_ROW = (ord(c) for c in "tTD")
COPY_IN, COPY_OUT, COPY_BOTH, NOTIFICATION, NEGOTIATE_VERSION = (ord(c) for c in "GHWAv")
# ReadyForQuery's transaction status: idle, in a transaction block, in a failed one.
TXN_IDLE, TXN_BLOCK, TXN_FAILED = (ord(c) for c in "ITE")
# Authentication request codes the proxy reads (in the AUTH message's first four bytes).
AUTH_OK, AUTH_SASL = 0, 10


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol (SQLSTATE 08P01)."""

    sqlstate = "08P01"


class _Framer:
    """Splits a byte stream into typed messages; shared by both directions."""

    __slots__ = ("_buf", "_keep", "_keep_left", "_max", "_need", "_pending", "_scan", "_skip", "_table",
                 "_wanted")

    def __init__(self, wanted: Iterable[str | int], max_message: int, keep: int, scan: _Scan | None = _scan) -> None:
        self._wanted = frozenset(ord(w) if isinstance(w, str) else w for w in wanted)
        self._table = bytes(t in self._wanted for t in range(256))
        self._scan = scan
        self._max = max_message
        self._keep = keep
        self._buf = bytearray()  # a partial header, or a wanted message being assembled
        self._need = 0  # bytes still to collect for the message in _buf (0: _buf holds a header)
        self._keep_left = 0  # of those, how many are kept (the rest are counted, not stored)
        self._skip = 0  # bytes still to skip of an unwanted message
        self._pending: tuple[int, int] | None = None  # (type, length) of the message in _buf

    def _typed(self, data: bytes | bytearray | memoryview, out: list[Message]) -> None:
        pos = 0
        end = len(data)
        if self._skip:
            if end <= self._skip:
                self._skip -= end
                return
            pos = self._skip
            self._skip = 0
        if self._pending is not None:
            pos = self._continue(data, pos, end, out)
            if self._pending is not None:
                return
        elif self._buf:
            take = min(5 - len(self._buf), end - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if len(self._buf) < 5:
                return
            header = bytes(self._buf)
            self._buf.clear()
            pos = self._start(header[0], _unpack_int32(header, 1)[0], data, pos, end, out)
            if self._pending is not None or self._skip:
                return
        wanted = self._wanted
        scan = self._scan
        while pos < end:
            if scan is not None:  # whole messages in C; it stops in front of anything else
                pos = scan(data, pos, self._table, self._max, self._keep, out)
                if pos >= end:
                    return
            if end - pos < 5:
                self._buf += data[pos:end]
                return
            typ = data[pos]
            length = _unpack_int32(data, pos + 1)[0]
            body_end = pos + 1 + length
            if body_end <= end and 4 <= length <= self._max:
                if typ in wanted:
                    keep_end = body_end if length - 4 <= self._keep else pos + 5 + self._keep
                    out.append((typ, bytes(data[pos + 5 : keep_end]), length - 4))
                pos = body_end
                continue
            pos = self._start(typ, length, data, pos + 5, end, out)
            if self._pending is not None or self._skip:
                return

    def at_boundary(self) -> bool:
        """Nothing half-read: the next byte fed starts a message (the compiled data plane takes over here)."""
        return self._pending is None and not self._buf and not self._skip

    def _check(self, typ: int, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length} for message type {typ:#04x}")
        if length > self._max:
            raise ProtocolViolation(
                f"message of type {typ:#04x} is {length} bytes, over the limit of {self._max}"
            )

    def _start(
        self, typ: int, length: int, data: bytes | bytearray | memoryview, pos: int, end: int,
        out: list[Message],
    ) -> int:
        """Begin a message whose header has been read; returns the new position in ``data``."""
        self._check(typ, length)
        size = length - 4
        if typ not in self._wanted:
            if end - pos >= size:
                return pos + size
            self._skip = size - (end - pos)
            return end
        self._pending = (typ, size)
        self._need = size
        self._keep_left = min(size, self._keep)
        return self._continue(data, pos, end, out)

    def _continue(
        self, data: bytes | bytearray | memoryview, pos: int, end: int, out: list[Message]
    ) -> int:
        take = min(self._need, end - pos)
        keep = min(take, self._keep_left)
        if keep:
            self._buf += data[pos : pos + keep]
            self._keep_left -= keep
        self._need -= take
        pos += take
        if self._need == 0:
            typ, size = self._pending  # type: ignore[misc]
            out.append((typ, bytes(self._buf), size))
            self._buf.clear()
            self._pending = None
        return pos


class BackendDecoder:
    """Server → client messages (always typed: the proxy answers SSLRequest itself)."""

    __slots__ = ("_framer",)

    def __init__(
        self,
        wanted: Iterable[str | int],
        max_message: int = DEFAULT_MAX_MESSAGE,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self._framer = _Framer(wanted, max_message, keep)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        out: list[Message] = []
        self._framer._typed(data, out)
        return out

    def at_boundary(self) -> bool:
        return self._framer.at_boundary()


class FrontendDecoder:
    """Client → server messages: untyped startup packets first, typed messages after StartupMessage.

    Over TLS (after SSLRequest, or direct TLS) it is fed the decrypted stream, from the first
    packet inside the encryption on.
    """

    __slots__ = ("_framer", "_started", "_startup")

    def __init__(
        self,
        wanted: Iterable[str | int],
        max_message: int = DEFAULT_MAX_MESSAGE,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self._framer = _Framer(wanted, max_message, keep)
        self._startup = bytearray()
        self._started = False

    @property
    def started(self) -> bool:
        """True once the StartupMessage has gone by and typed messages follow."""
        return self._started

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        out: list[Message] = []
        if self._started:
            self._framer._typed(data, out)
            return out
        self._startup += data
        while not self._started:
            if len(self._startup) < 4:
                return out
            length = _unpack_int32(self._startup, 0)[0]
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProtocolViolation(f"invalid startup packet length {length}")
            if len(self._startup) < length:
                return out
            packet = bytes(self._startup[:length])
            del self._startup[:length]
            out.append((_startup_kind(packet), packet, length))
            if out[-1][0] in (STARTUP, CANCEL_REQUEST):
                self._started = out[-1][0] == STARTUP
                rest = bytes(self._startup)
                self._startup.clear()
                if self._started and rest:
                    self._framer._typed(rest, out)
                elif rest:
                    raise ProtocolViolation("unexpected bytes after CancelRequest")
                return out
        return out

    def at_boundary(self) -> bool:
        """Past the StartupMessage with nothing half-read."""
        return self._started and self._framer.at_boundary()

    def pending_startup_bytes(self) -> int:
        """Bytes received but not yet decoded during startup (the proxy must not lose them)."""
        return len(self._startup)


def _startup_kind(packet: bytes) -> int:
    code = _unpack_int32(packet, 4)[0]
    if code == SSL_REQUEST_CODE and len(packet) == 8:
        return SSL_REQUEST
    if code == GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENC_REQUEST
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolation("CancelRequest must be 16 bytes")
        return CANCEL_REQUEST
    if code >> 16 == 3:
        return STARTUP
    raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")


# -- decoding message bodies -------------------------------------------------------------------
#
# Only bodies read off the hot path, or read once a statement anyway, are decoded here. Query, Parse,
# Bind, Execute, Describe, Close and ReadyForQuery are read in place by ``proxy.session`` (a call a
# message would cost more than the reading), and Bind values by ``proxy.params`` when an event is built.


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(0, pos)
    return body[pos:end].decode("utf-8", "replace"), end + 1


def _field(body: bytes, pos: int) -> tuple[bytes, int]:
    """The bytes from ``pos`` up to the next NUL (or the end of ``body``), and the position after it."""
    end = body.find(0, pos)
    if end < 0:
        return body[pos:], len(body)
    return body[pos:end], end + 1


def parse_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    """StartupMessage → (protocol version, parameters)."""
    version = _unpack_int32(packet, 4)[0]
    params: dict[str, str] = {}
    pos = 8
    try:
        while pos < len(packet) and packet[pos] != 0:
            key, pos = _cstr(packet, pos)
            params[key], pos = _cstr(packet, pos)
    except ValueError:
        raise ProtocolViolation("malformed StartupMessage") from None
    return version, params


@functools.lru_cache(maxsize=1024)
def parse_command_complete(body: bytes) -> tuple[str, str | None]:
    """CommandComplete → (tag words, row count as text or None). ``INSERT 0 5`` → ('INSERT', '5').

    The count stays text: events carry it as text. Remembered, since a workload's answers are mostly
    the same few bodies (``SELECT 1``, ``UPDATE 1``, ``COMMIT``).
    """
    end = body.find(0)
    text = body[: end if end >= 0 else len(body)].decode("ascii", "replace")
    sp = text.rfind(" ")
    if sp > 0:
        tail = text[sp + 1 :]
        if tail.isdigit():
            head = text[:sp]
            if head.startswith("INSERT "):
                head = "INSERT"
            return head, tail
    return text, None


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse or NoticeResponse → {field code: value} (S, V, C, M, D, H, P …)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        try:
            fields[code], pos = _cstr(body, pos + 1)
        except ValueError:
            break
    return fields


def parse_parameter_description(body: bytes) -> list[int]:
    """ParameterDescription → parameter type OIDs; struct.error when the body is short."""
    count = _unpack_int16(body, 0)[0]
    return list(struct.unpack_from(f"!{count}I", body, 2)) if count > 0 else []


def parse_parameter_status(body: bytes) -> tuple[bytes, bytes]:
    """ParameterStatus → (name, value), undecoded: the session compares the name as bytes."""
    name, pos = _field(body, 0)
    return name, _field(body, pos)[0]


def parse_backend_key(body: bytes) -> tuple[int, bytes]:
    """BackendKeyData → (backend pid, secret key); the key is 4 bytes in protocol 3.0, up to 256 in 3.2.

    struct.error when the body is shorter than the pid.
    """
    return _unpack_int32(body, 0)[0], body[4:]


# -- building messages the proxy sends itself ---------------------------------------------------


def error_response(message: str, sqlstate: str = "08P01", severity: str = "FATAL") -> bytes:
    """An ErrorResponse a client driver shows as an ordinary server error."""
    body = b"".join(
        code + value.encode("utf-8").replace(b"\0", b" ") + b"\0"
        for code, value in ((b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message))
    ) + b"\0"
    return b"E" + _INT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _INT32.pack(8) + _INT32.pack(SSL_REQUEST_CODE)


def startup_message(params: dict[str, str], version: int = PROTOCOL_3) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return _INT32.pack(len(body) + 8) + _INT32.pack(version) + body


def message(typ: str, body: bytes = b"") -> bytes:
    """Frame a typed message (tests and the proxy's own replies use it)."""
    return typ.encode() + _INT32.pack(len(body) + 4) + body
