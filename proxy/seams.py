"""The seams between a connection's two legs and statement capture, declared once.

A connection feeds its decoded messages to a :class:`Tap`: ``proxy.session.Session`` turns them into
events, on either data plane. The server holds it through this interface only, so the session state
can be replaced (compiled, say) without the server changing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .wire import Message

Emit = Callable[[dict[str, str]], None]
"""Where a Session hands each finished event (``proxy.capture.Capture.emit``; see ``proxy.events``)."""


@runtime_checkable
class Tap(Protocol):
    """One client connection's capture, fed after the bytes were forwarded; it never affects traffic."""

    user: str
    database: str
    app: str

    @property
    def idle(self) -> bool:
        """Nothing in flight and no transaction open: closing now loses no work."""
        ...

    def from_client(self, messages: list[Message], now_us: int) -> None: ...

    def from_server(self, messages: list[Message], now_us: int) -> None: ...

    def close(self, now_us: int) -> None:
        """The connection ended; nothing more arrives."""
        ...
