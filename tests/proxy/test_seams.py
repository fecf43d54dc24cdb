"""proxy.seams: both kinds of capture are the Tap the server holds, and report the same things."""

from __future__ import annotations

import struct

import pytest

from fasterdata.config.settings import ProxySettings
from fasterdata.proxy import wire
from fasterdata.proxy.captap import CaptureLink
from fasterdata.proxy.seams import Tap
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED, Session
from fasterdata.proxy.stats import ProxyStats

PARAMS = {"user": "alice", "database": "shop", "application_name": "web"}


def inline() -> Tap:
    return Session("t-1", "127.0.0.1:5000", PARAMS)


def remote() -> Tap:
    """A RemoteSession whose link has no worker yet: it drops what it would ship, and still tracks idleness."""
    link = CaptureLink(ProxySettings(), 0, "unused.spool", ProxyStats())
    return link.session("t-1", "127.0.0.1:5000", PARAMS)


@pytest.mark.parametrize("make", [inline, remote])
def test_both_taps_track_a_login_and_a_transaction_alike(make) -> None:
    tap = make()
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
