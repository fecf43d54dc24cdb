"""proxy.seams: the Session is the Tap the server holds, and an object without its calls is not."""

from __future__ import annotations

import struct

from fasterdata.proxy import wire
from fasterdata.proxy.seams import Tap
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED, Session

PARAMS = {"user": "alice", "database": "shop", "application_name": "web"}


def test_the_session_tracks_a_login_and_a_transaction() -> None:
    tap: Tap = Session("t-1", "127.0.0.1:5000", PARAMS)
    assert isinstance(tap, Tap)
    assert (tap.user, tap.database, tap.app) == ("alice", "shop", "web")
    fe, be = wire.FrontendDecoder(FRONTEND_WANTED), wire.BackendDecoder(BACKEND_WANTED)
    fe.feed(wire.startup_message(PARAMS))
    assert not tap.idle  # the login awaits its ReadyForQuery
    tap.from_server(be.feed(wire.message("R", struct.pack("!i", wire.AUTH_OK))
                            + wire.message("K", struct.pack("!ii", 4242, 7)) + wire.message("Z", b"I")), 1)
    assert tap.idle
    tap.from_client(fe.feed(wire.message("Q", b"begin\0")), 2)
    assert not tap.idle
    tap.from_server(be.feed(wire.message("C", b"BEGIN\0") + wire.message("Z", b"T")), 3)
    assert not tap.idle  # answered, but inside a transaction
    tap.from_client(fe.feed(wire.message("Q", b"commit\0")), 4)
    tap.from_server(be.feed(wire.message("C", b"COMMIT\0") + wire.message("Z", b"I")), 5)
    assert tap.idle
    tap.close(6)


def test_an_object_without_the_calls_is_no_tap() -> None:
    class Half:
        user = database = app = ""
        idle = True

        def from_client(self, messages: list[wire.Message], now_us: int) -> None: ...

    assert not isinstance(Half(), Tap)
