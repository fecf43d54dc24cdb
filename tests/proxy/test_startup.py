"""proxy.startup without sockets: what a client hears before its session begins, and the SCRAM rewrite.

ClientHellos are real ones, written by OpenSSL into a memory BIO.
"""

from __future__ import annotations

import ssl
import struct

import pytest

from fasterdata.proxy import startup, tls, wire
from fasterdata.proxy.session import FRONTEND_WANTED
from fasterdata.proxy.startup import Cancel, Close, Fail, Handshake, Negotiation, Start, Step

STARTUP = wire.startup_message({"user": "alice", "database": "shop"})
GSSENC = struct.pack("!ii", 8, wire.GSSENC_REQUEST_CODE)
CANCEL = struct.pack("!iiii", 16, wire.CANCEL_REQUEST_CODE, 4242, 77)
QUERY = wire.message("Q", b"select 1\0")


def negotiation() -> Negotiation:
    return Negotiation(wire.FrontendDecoder(FRONTEND_WANTED))


def client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- in the clear ---------------------------------------------------------------------------------


def test_startup_message_starts_the_session_and_is_forwarded_whole() -> None:
    n = negotiation()
    assert n.feed(STARTUP[:7], can_tls=False) == Step()
    step = n.feed(STARTUP[7:] + QUERY, can_tls=False)
    assert step.reply == b""
    assert step.outcome == Start({"user": "alice", "database": "shop"}, STARTUP + QUERY,
                                 [(wire.QUERY, b"select 1\0", len(b"select 1\0"))])
    assert n.decoder.started and not n.tls


def test_ssl_request_without_a_certificate_is_answered_n() -> None:
    n = negotiation()
    assert n.feed(wire.ssl_request(), can_tls=False) == Step(b"N")
    step = n.feed(STARTUP, can_tls=False)
    assert isinstance(step.outcome, Start) and step.outcome.forward == STARTUP


def test_requests_in_one_read_are_answered_in_order() -> None:
    """GSSENCRequest and SSLRequest answered 'N' each; the StartupMessage after them is not theirs to keep."""
    step = negotiation().feed(GSSENC + wire.ssl_request() + STARTUP, can_tls=False)
    assert step.reply == b"NN"
    assert isinstance(step.outcome, Start) and step.outcome.forward == STARTUP


def test_ssl_request_with_a_certificate_is_answered_s_and_tls_follows() -> None:
    n = negotiation()
    assert n.feed(wire.ssl_request(), can_tls=True) == Step(b"S")
    assert n.tls_pending
    hello = client_hello(["postgresql"])
    assert n.feed(hello, can_tls=True) == Step(outcome=Handshake(hello))
    assert n.tls_established("postgresql") is None
    assert n.tls and not n.tls_pending and not n.direct
    step = n.feed(STARTUP, can_tls=True)  # decrypted, from inside TLS
    assert isinstance(step.outcome, Start) and step.outcome.forward == STARTUP


def test_a_second_ssl_request_inside_tls_is_answered_n() -> None:
    n = negotiation()
    n.feed(wire.ssl_request(), can_tls=True)
    n.feed(client_hello(None), can_tls=True)
    assert n.tls_established(None) is None  # no ALPN is fine after SSLRequest
    assert n.feed(wire.ssl_request(), can_tls=True) == Step(b"N")


def test_bytes_after_ssl_request_are_refused() -> None:
    """They would be read as if they had come through TLS (CVE-2021-23214)."""
    step = negotiation().feed(wire.ssl_request() + STARTUP[:3], can_tls=True)
    assert step == Step(b"", Fail("received unencrypted data after SSL request"))


def test_cancel_request_is_passed_on() -> None:
    assert negotiation().feed(CANCEL, can_tls=True) == Step(outcome=Cancel(CANCEL))


def test_malformed_startup_bytes_fail_with_the_decoders_reason() -> None:
    step = negotiation().feed(struct.pack("!ii", 8, 1234), can_tls=False)
    assert step.outcome == Fail("unsupported frontend protocol 0.1234", "08P01")


def test_a_startup_message_whose_parameters_are_cut_short_fails_with_08p01() -> None:
    """A key without its value's NUL: the session is refused with a reason, not dropped by an exception."""
    body = struct.pack("!i", 196608) + b"user\0alice"
    step = negotiation().feed(struct.pack("!i", 4 + len(body)) + body, can_tls=False)
    assert step.outcome == Fail("malformed StartupMessage", "08P01")


# -- refusals ------------------------------------------------------------------------------------


def test_a_refused_client_is_told_in_answer_to_its_startup_message() -> None:
    n = negotiation()
    n.refuse(Fail("too many connections", "53300"))
    assert n.feed(wire.ssl_request(), can_tls=False) == Step(b"N")  # not yet: libpq would lose the reason
    assert n.feed(STARTUP, can_tls=False) == Step(outcome=Fail("too many connections", "53300"))


def test_a_refused_client_may_still_cancel_a_denied_one_may_not() -> None:
    refused = negotiation()
    refused.refuse(Fail("too many connections", "53300"))
    assert refused.feed(CANCEL, can_tls=False).outcome == Cancel(CANCEL)
    denied = negotiation()
    denied.refuse(Fail("not allowed", "28000"), may_cancel=False)
    assert denied.feed(CANCEL, can_tls=False).outcome == Cancel(None)


def test_the_first_refusal_stands() -> None:
    n = negotiation()
    n.refuse(Fail("not allowed", "28000"), may_cancel=False)
    n.refuse(Fail("too many connections", "53300"))
    assert n.feed(STARTUP, can_tls=False).outcome == Fail("not allowed", "28000")
    assert not n.may_cancel


# -- direct TLS and ALPN --------------------------------------------------------------------------


def test_direct_tls_collects_the_whole_first_record() -> None:
    hello = client_hello(["postgresql"])
    n = negotiation()
    for piece in (hello[:1], hello[1:5], hello[5:-1]):  # the record header itself arrives cut
        assert n.feed(piece, can_tls=True) == Step()
        assert n.direct and n.tls_pending
    assert n.feed(hello[-1:], can_tls=True) == Step(outcome=Handshake(hello))
    assert n.tls_established("postgresql") is None
    assert n.tls and not n.tls_pending


def test_direct_tls_without_a_certificate_is_closed() -> None:
    step = negotiation().feed(client_hello(["postgresql"]), can_tls=False)
    assert step == Step(outcome=Close("client started TLS directly (sslnegotiation=direct) but the proxy has "
                                      "no tls_cert"))


def test_direct_tls_without_alpn_is_closed_after_the_handshake() -> None:
    n = negotiation()
    hello = client_hello(None)
    assert n.feed(hello, can_tls=True) == Step(outcome=Handshake(hello))
    assert n.tls_established(None) == Close("direct TLS (sslnegotiation=direct) without ALPN 'postgresql'")


@pytest.mark.parametrize(("first", "how"), [(b"", "direct TLS (sslnegotiation=direct)"),
                                           (wire.ssl_request(), "TLS after SSLRequest")])
def test_alpn_without_postgresql_gets_the_alert(first: bytes, how: str) -> None:
    n = negotiation()
    if first:
        n.feed(first, can_tls=True)
    step = n.feed(client_hello(["h2", "http/1.1"]), can_tls=True)
    assert step.reply == tls.NO_APPLICATION_PROTOCOL_ALERT
    assert step.outcome == Close(f"{how} offering ALPN ['h2', 'http/1.1'] without 'postgresql'; sent the "
                                 "no_application_protocol alert")


def test_a_hello_it_cannot_read_is_left_to_the_handshake() -> None:
    """A first record that holds no whole ClientHello: no verdict here, OpenSSL judges it."""
    record = b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"
    assert negotiation().feed(record, can_tls=True) == Step(outcome=Handshake(record))


def test_an_oversized_first_record_is_not_waited_for() -> None:
    head = b"\x16\x03\x01\xff\xff" + bytes(100)  # announces more than a TLS record may hold
    assert negotiation().feed(head, can_tls=True) == Step(outcome=Handshake(head))


# -- the SCRAM rewrite ----------------------------------------------------------------------------


def sasl(*mechanisms: bytes) -> bytes:
    return wire.message("R", struct.pack("!i", wire.AUTH_SASL) + b"".join(m + b"\0" for m in mechanisms) + b"\0")


def test_drop_scram_plus_keeps_plain_scram() -> None:
    after = wire.message("Z", b"I")  # anything behind the first message goes on untouched
    assert startup.drop_scram_plus(sasl(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256") + after) == \
        sasl(b"SCRAM-SHA-256") + after


def test_drop_scram_plus_waits_for_the_whole_message() -> None:
    first = sasl(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256")
    for cut in (0, 1, 4, 5, len(first) - 1):
        assert startup.drop_scram_plus(first[:cut]) is None


@pytest.mark.parametrize("first", [
    sasl(b"SCRAM-SHA-256"),  # nothing to drop
    sasl(b"SCRAM-SHA-256-PLUS"),  # nothing would be left: the server's verdict stands
    wire.message("R", struct.pack("!i", wire.AUTH_OK)),  # trust: no SASL at all
    wire.error_response("password authentication failed", "28P01"),
    b"R" + struct.pack("!i", 1 << 20) + bytes(20),  # incomplete, but too long to hold back: not waited for
])
def test_drop_scram_plus_passes_anything_else_on_unchanged(first: bytes) -> None:
    assert startup.drop_scram_plus(first) == first
