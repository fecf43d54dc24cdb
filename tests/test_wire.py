"""The sans-I/O decoder, driven without sockets: framing, startup packets, body decoders, limits, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasterdata.proxy import wire

FRONT = "QPBECDSHX"
BACK = "RKSZCEI123stnGHW"


def feed_in_pieces(decoder: wire.FrontendDecoder | wire.BackendDecoder, data: bytes, cuts: list[int]):
    out = []
    pos = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut > pos:
            out += decoder.feed(data[pos:cut])
            pos = cut
    return out


def client_stream() -> bytes:
    return b"".join([
        wire.startup_message({"user": "alice", "database": "shop", "application_name": "web"}),
        wire.message("p", b"secret-password\0"),
        wire.message("Q", b"select 1; select 2\0"),
        wire.message("P", b"s1\0select $1::int\0\0\x01\0\0\0\x17"),
        wire.message("B", b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x2a\0\x00"),
        wire.message("E", b"\0\0\0\0\x05"),
        wire.message("d", b"x" * 3000),
        wire.message("S"),
    ])


def test_frontend_messages_and_startup() -> None:
    msgs = wire.FrontendDecoder(FRONT).feed(client_stream())
    kinds = [m[0] for m in msgs]
    assert kinds == [wire.STARTUP, ord("Q"), ord("P"), ord("B"), ord("E"), ord("S")]
    version, params = wire.parse_startup(msgs[0][1])
    assert version == wire.PROTOCOL_3
    assert params == {"user": "alice", "database": "shop", "application_name": "web"}
    assert msgs[1][1] == b"select 1; select 2\0"
    assert msgs[3][1] == b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x2a\0\x00"


def test_password_and_copy_data_are_never_surfaced() -> None:
    msgs = wire.FrontendDecoder(FRONT).feed(client_stream())
    assert all(b"secret-password" not in m[1] for m in msgs)
    assert ord("p") not in [m[0] for m in msgs] and ord("d") not in [m[0] for m in msgs]


@given(st.lists(st.integers(min_value=0, max_value=3300), max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_split_of_the_stream_yields_the_same_messages(cuts: list[int]) -> None:
    """TCP may cut the stream anywhere; the decoder must not care where."""
    data = client_stream()
    whole = wire.FrontendDecoder(FRONT).feed(data)
    assert feed_in_pieces(wire.FrontendDecoder(FRONT), data, cuts) == whole


def test_oversized_wanted_message_keeps_a_prefix_only() -> None:
    body = b"s\0select 1\0" + b"y" * 5000
    dec = wire.FrontendDecoder("P", keep=100)
    data = wire.startup_message({"user": "u"}) + wire.message("P", body) + wire.message("P", b"a\0b\0\0\0")
    msgs = feed_in_pieces(dec, data, list(range(0, len(data), 777)))
    assert [(m[0], len(m[1]), m[2]) for m in msgs[1:]] == [(ord("P"), 100, len(body)), (ord("P"), 6, 6)]
    assert msgs[1][1] == body[:100]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (struct.pack("!i", 3) + b"garbage", "startup packet length"),
        (struct.pack("!i", 999_999) + b"\0\3\0\0", "startup packet length"),
        (struct.pack("!ii", 8, 1234), "unsupported frontend protocol"),
        (wire.startup_message({"user": "u"}) + b"Q" + struct.pack("!i", -5), "invalid message length"),
        (wire.startup_message({"user": "u"}) + b"Q" + struct.pack("!i", 2), "invalid message length"),
        (wire.startup_message({"user": "u"}) + b"d" + struct.pack("!i", 1 << 30), "over the limit"),
    ],
)
def test_malformed_input_raises_protocol_violation(data: bytes, needle: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=needle):
        wire.FrontendDecoder(FRONT, max_message=1 << 20).feed(data)


def test_untyped_requests() -> None:
    dec = wire.FrontendDecoder(FRONT)
    ssl = wire.ssl_request()
    gss = struct.pack("!ii", 8, wire.GSSENC_REQUEST_CODE)
    assert [m[0] for m in dec.feed(ssl + gss)] == [wire.SSL_REQUEST, wire.GSSENC_REQUEST]
    assert not dec.started
    cancel = struct.pack("!iiii", 16, wire.CANCEL_REQUEST_CODE, 4242, -7)
    msgs = wire.FrontendDecoder(FRONT).feed(cancel)
    assert msgs[0][0] == wire.CANCEL_REQUEST and msgs[0][1] == cancel


def test_backend_messages() -> None:
    data = b"".join([
        wire.message("R", struct.pack("!i", 0)),
        wire.message("K", struct.pack("!ii", 77, 99)),
        wire.message("S", b"application_name\0web\0"),
        wire.message("t", struct.pack("!hII", 2, 23, 25)),
        wire.message("T", b"\0\1" + b"x" * 30),
        wire.message("D", b"\0\1\0\0\0\1" + b"1"),
        wire.message("C", b"INSERT 0 5\0"),
        wire.message("E", b"SERROR\0C23505\0Mduplicate key\0\0"),
        wire.message("Z", b"T"),
    ])
    msgs = wire.BackendDecoder(BACK).feed(data)
    assert [m[0] for m in msgs] == [wire.AUTH, wire.BACKEND_KEY, wire.PARAMETER_STATUS, wire.PARAMETER_DESCRIPTION,
                                    wire.COMMAND_COMPLETE, wire.ERROR, wire.READY]
    assert msgs[0][1] == wire.AUTH_OK.to_bytes(4, "big")
    assert wire.parse_backend_key(msgs[1][1]) == (77, (99).to_bytes(4, "big"))
    assert wire.parse_parameter_status(msgs[2][1]) == (b"application_name", b"web")
    assert wire.parse_parameter_description(msgs[3][1]) == [23, 25]
    assert wire.parse_command_complete(msgs[4][1]) == ("INSERT", "5")
    assert wire.parse_fields(msgs[5][1])["C"] == "23505"
    assert msgs[6][1] == bytes((wire.TXN_BLOCK,))


def test_backend_key_of_protocol_3_2_keeps_the_whole_secret() -> None:
    secret = bytes(range(32))
    assert wire.parse_backend_key(struct.pack("!i", 77) + secret) == (77, secret)


def test_parameter_status_without_terminators_reads_to_the_end() -> None:
    assert wire.parse_parameter_status(b"application_name\0web") == (b"application_name", b"web")
    assert wire.parse_parameter_status(b"application_name") == (b"application_name", b"")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("SELECT 3", ("SELECT", "3")), ("UPDATE 0", ("UPDATE", "0")), ("BEGIN", ("BEGIN", None)),
     ("COPY 12", ("COPY", "12")), ("MERGE 2", ("MERGE", "2")), ("CREATE TABLE", ("CREATE TABLE", None)),
     ("INSERT 0 5", ("INSERT", "5")), ("FETCH 10", ("FETCH", "10")), ("SELECT", ("SELECT", None))],
)
def test_command_tags(tag: str, expected: tuple[str, str | None]) -> None:
    assert wire.parse_command_complete(tag.encode() + b"\0") == expected


def test_error_response_round_trips() -> None:
    msgs = wire.BackendDecoder("E").feed(wire.error_response("bad \0 thing", "08P01"))
    fields = wire.parse_fields(msgs[0][1])
    assert fields["C"] == "08P01" and fields["S"] == "FATAL" and fields["M"] == "bad   thing"


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
def test_fuzz_frontend_only_messages_or_violation(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes only ever yield well-formed messages or the decoder's own protocol error."""
    dec = wire.FrontendDecoder(FRONT, max_message=4096, keep=64)
    try:
        msgs = feed_in_pieces(dec, data, cuts)
    except wire.ProtocolViolation:
        return
    for typ, body, length in msgs:
        assert len(body) <= max(length, 0) + 10_000
        assert typ < 0 or chr(typ) in FRONT


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
def test_fuzz_backend_and_body_parsers(data: bytes, cuts: list[int]) -> None:
    """Body decoders meet arbitrary bodies too: only those of fixed layout may raise, and only struct.error."""
    dec = wire.BackendDecoder(BACK, max_message=4096, keep=64)
    try:
        msgs = feed_in_pieces(dec, b"C" + struct.pack("!i", len(data) + 4) + data, cuts)
    except wire.ProtocolViolation:
        return
    for _typ, body, _length in msgs:
        wire.parse_command_complete(body)
        wire.parse_fields(body)
        wire.parse_parameter_status(body)
        for parse in (wire.parse_parameter_description, wire.parse_backend_key):
            with contextlib.suppress(struct.error):
                parse(body)
