"""Builders for real protocol message bytes, and a harness that drives a Session through the decoders.

Everything is framed with ``wire.message`` and decoded by the same FrontendDecoder/BackendDecoder the
proxy uses, with the session's wanted sets, so a test sees exactly what the proxy would.
"""

from __future__ import annotations

import struct

from fasterdata.proxy import wire
from fasterdata.proxy.events import CaptureOptions
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED, Session

# The Session implementation the Harness builds (conftest's session_class fixture switches it).
SESSION: type = Session


def cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


# -- frontend ----------------------------------------------------------------------------------


def query(sql: str) -> bytes:
    return wire.message("Q", cstr(sql))


def parse(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    return wire.message("P", cstr(name) + cstr(sql) + struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def bind(values: list[bytes | None] = (), stmt: str = "", portal: str = "",  # type: ignore[assignment]
         formats: tuple[int, ...] = (), result_formats: tuple[int, ...] = ()) -> bytes:
    body = cstr(portal) + cstr(stmt) + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    body += struct.pack(f"!h{len(result_formats)}h", len(result_formats), *result_formats)
    return wire.message("B", body)


def execute(portal: str = "", limit: int = 0) -> bytes:
    return wire.message("E", cstr(portal) + struct.pack("!i", limit))


def describe(kind: str, name: str = "") -> bytes:
    return wire.message("D", kind.encode() + cstr(name))


def close(kind: str, name: str = "") -> bytes:
    return wire.message("C", kind.encode() + cstr(name))


def sync() -> bytes:
    return wire.message("S")


def flush() -> bytes:
    return wire.message("H")


def copy_data(data: bytes) -> bytes:
    return wire.message("d", data)


def copy_done() -> bytes:
    return wire.message("c")


def password(secret: str) -> bytes:
    return wire.message("p", cstr(secret))


# -- backend -----------------------------------------------------------------------------------


def complete(tag: str) -> bytes:
    return wire.message("C", cstr(tag))


def ready(status: str = "I") -> bytes:
    return wire.message("Z", status.encode())


def error(code: str, msg: str, severity: str = "ERROR") -> bytes:
    body = b"".join(k + cstr(v) for k, v in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", msg)))
    return wire.message("E", body + b"\0")


def parse_complete() -> bytes:
    return wire.message("1")


def bind_complete() -> bytes:
    return wire.message("2")


def close_complete() -> bytes:
    return wire.message("3")


def no_data() -> bytes:
    return wire.message("n")


def suspended() -> bytes:
    return wire.message("s")


def empty_query() -> bytes:
    return wire.message("I")


def param_description(*oids: int) -> bytes:
    return wire.message("t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
    return wire.message("T", body)


def data_row(*values: bytes) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", len(v)) + v
    return wire.message("D", body)


def copy_in_response() -> bytes:
    return wire.message("G", b"\0\0\0")


def parameter_status(name: str, value: str) -> bytes:
    return wire.message("S", cstr(name) + cstr(value))


def backend_key(pid: int, key: int = 7) -> bytes:
    return wire.message("K", struct.pack("!ii", pid, key))


def auth_ok() -> bytes:
    return wire.message("R", struct.pack("!i", 0))


def login_answer(pid: int = 4242, app: str = "") -> bytes:
    return auth_ok() + parameter_status("application_name", app) + backend_key(pid) + ready()


# -- harness -----------------------------------------------------------------------------------


class Harness:
    """A Session fed through the proxy's decoders with a fake clock (µs, advanced by hand)."""

    def __init__(self, options: CaptureOptions | None = None, params: dict[str, str] | None = None,
                 pid: int = 4242, login: bool = True, session_class: type | None = None,
                 keep: int = wire.DEFAULT_KEEP) -> None:
        self.events: list[dict[str, str]] = []
        self.now = 1_000_000
        self.fe = wire.FrontendDecoder(FRONTEND_WANTED, keep=keep)
        self.be = wire.BackendDecoder(BACKEND_WANTED, keep=keep)
        startup = params or {"user": "alice", "database": "shop", "application_name": "web"}
        msgs = self.fe.feed(wire.startup_message(startup))
        _version, startup_params = wire.parse_startup(msgs[0][1])
        self.session = (session_class or SESSION)("t-1", "10.0.0.1:5555", startup_params, emit=self.events.append,
                               options=options)
        if login:
            self.server(login_answer(pid, startup.get("application_name", "")))

    def tick(self, us: int) -> None:
        self.now += us

    def client(self, *parts: bytes, at: int | None = None) -> None:
        if at is not None:
            self.now = at
        msgs = self.fe.feed(b"".join(parts))
        if msgs:
            self.session.from_client(msgs, self.now)

    def server(self, *parts: bytes, at: int | None = None) -> None:
        if at is not None:
            self.now = at
        msgs = self.be.feed(b"".join(parts))
        if msgs:
            self.session.from_server(msgs, self.now)

    def take(self) -> list[dict[str, str]]:
        out, self.events[:] = list(self.events), []
        return out

    def stmts(self) -> list[dict[str, str]]:
        return [e for e in self.events if e["kind"] == "stmt"]
