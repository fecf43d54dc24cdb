"""A hand-driven PostgreSQL client socket, for traffic no driver would send, and reading what comes back."""

from __future__ import annotations

import socket
import struct
from typing import Any

from fasterdata.proxy import wire
from tests.kit.services import PG_USER

ALL_TYPES = range(256)  # decode every backend message in raw tests


class RawClient:
    """A hand-driven PostgreSQL client socket, for traffic no driver would send."""

    def __init__(self, port: int, timeout: float = 10.0, sock: Any = None) -> None:
        """Connects to ``port``, unless ``sock`` (anything with sendall/recv/close) is given to talk over."""
        self.sock = sock if sock is not None else socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = wire.BackendDecoder(ALL_TYPES)
        self.pending: list[wire.Message] = []
        self.backend_pid = 0
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_raw(self, size: int) -> bytes:
        """Exactly ``size`` bytes (for single-byte answers such as SSLRequest's 'N')."""
        out = b""
        while len(out) < size:
            chunk = self.sock.recv(size - len(out))
            if not chunk:
                raise AssertionError(f"connection closed after {out!r}")
            out += chunk
        return out

    def next(self) -> wire.Message | None:
        """The next backend message, or None once the peer has closed the connection."""
        while not self.pending:
            if self.eof:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                continue
            self.pending.extend(self.decoder.feed(chunk))
        return self.pending.pop(0)

    def until(self, typ: str) -> list[wire.Message]:
        """Messages up to and including the first of type ``typ``; fails on EOF."""
        seen: list[wire.Message] = []
        while True:
            msg = self.next()
            if msg is None:
                raise AssertionError(f"connection closed before {typ!r}; got {[chr(m[0]) for m in seen]}")
            seen.append(msg)
            if msg[0] == ord("K"):
                self.backend_pid = wire.parse_backend_key(msg[1])[0]
            if msg[0] == ord(typ):
                return seen

    def rest(self) -> list[wire.Message]:
        """Everything until the peer closes (bounded by the socket timeout)."""
        seen: list[wire.Message] = []
        while (msg := self.next()) is not None:
            seen.append(msg)
        return seen

    def login(self, dbname: str = "postgres", version: int = wire.PROTOCOL_3, **params: str) -> list[wire.Message]:
        """StartupMessage with trust auth; returns every message up to the first ReadyForQuery."""
        self.send(wire.startup_message({"user": PG_USER, "database": dbname, **params}, version))
        return self.until("Z")

    def query(self, sql: str) -> list[wire.Message]:
        self.send(wire.message("Q", sql.encode() + b"\0"))
        return self.until("Z")

    def abort(self) -> None:
        """Vanish without a Terminate message: RST, as when a client process is killed."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def errors(messages: list[wire.Message]) -> list[dict[str, str]]:
    """The ErrorResponse fields among ``messages``."""
    return [wire.parse_fields(body) for typ, body, _ in messages if typ == wire.ERROR]
