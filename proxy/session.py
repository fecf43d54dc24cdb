"""One client session's protocol state, driven by decoded messages from both directions (sans-I/O).

The server feeds it every message the decoders hand back. It knows enough to say whether the
session is idle (for graceful shutdown) and which backend serves it.
"""

from __future__ import annotations

from . import wire

# Message types the decoders keep; everything else is skipped by length, unread.
FRONTEND_WANTED = "QPBECDSHX"
BACKEND_WANTED = "RKSZCEI123stnGHW"


class Session:
    """Protocol state of one client connection."""

    __slots__ = ("app", "backend_pid", "client", "database", "options", "outstanding", "sid", "status",
                 "user")

    def __init__(self, sid: str, client: str, params: dict[str, str]) -> None:
        self.sid = sid
        self.client = client
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        self.app = params.get("application_name", "")
        self.options = params.get("options", "")
        self.backend_pid = 0
        self.status = "I"  # last ReadyForQuery status
        self.outstanding = 1  # the login, then Query and Sync messages, awaiting ReadyForQuery

    @property
    def idle(self) -> bool:
        """Nothing in flight and no transaction open: closing now loses no work."""
        return self.outstanding <= 0 and self.status == "I"

    def from_client(self, messages: list[wire.Message], now_us: int) -> None:
        for typ, _body, _length in messages:
            if typ == wire.QUERY or typ == wire.SYNC:
                self.outstanding += 1

    def from_server(self, messages: list[wire.Message], now_us: int) -> None:
        for typ, body, _length in messages:
            if typ == wire.READY:
                self.outstanding -= 1
                self.status = wire.parse_ready(body)
            elif typ == wire.BACKEND_KEY:
                self.backend_pid = wire.parse_backend_key(body)[0]

    def close(self, now_us: int) -> None:
        """The connection ended; nothing more will arrive."""
