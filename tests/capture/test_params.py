"""Parameter decoding by type OID, text and binary format: exact, bounded, and never raising.

Binary values are produced by psycopg's own dumpers (no connection needed) and, for the date/time,
interval, numeric and uuid types, the decoded text is checked against what PostgreSQL itself prints
for the same binary value.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from decimal import Decimal

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.adapt import PyFormat, Transformer

from fasterdata.proxy import params
from tests.kit.services import direct_dsn

from .pgmsg import cstr

_tx = Transformer()


def binary(value: object) -> tuple[bytes, int]:
    dumper = _tx.get_dumper(value, PyFormat.BINARY)
    return bytes(dumper.dump(value)), dumper.oid


def dec(v: bytes, fmt: int, oid: int, max_bytes: int = 1024) -> object:
    fragment = params.decode_value(v, fmt, oid, max_bytes)
    return json.loads(fragment)


@pytest.mark.parametrize(("raw", "oid", "expected"), [
    (b"42", 23, 42), (b"-7", 21, -7), (b"9223372036854775807", 20, 9223372036854775807),
    (b"007", 23, 7), (b"abc", 23, "abc"), (b"1.5", 701, 1.5), (b"NaN", 701, "NaN"),
    (b"-Infinity", 700, "-Infinity"), (b"12.3400", 1700, "12.3400"), (b"t", 16, True), (b"false", 16, False),
    (b"hello", 25, "hello"), (b"hello", 0, "hello"), (b"2020-01-02", 1082, "2020-01-02"),
    (b'{"a": 1}', 3802, '{"a": 1}'), (b"\\x0001", 17, "\\x0001"), (b"{1,2,NULL}", 1007, [1, 2, None]),
    (b'{"a b","c\\"d",NULL,""}', 1009, ["a b", 'c"d', None, ""]), (b"{{1,2},{3,4}}", 1007, [[1, 2], [3, 4]]),
    (b"[0:1]={7,8}", 1007, [7, 8]), (b"{}", 1009, []), (b"{1.5,NaN}", 1231, ["1.5", "NaN"]),
    (b"{t,f}", 1000, [True, False]), (b"{broken", 1007, "{broken"), (b"x", 99999, "x"),
])
def test_text_format(raw: bytes, oid: int, expected: object) -> None:
    assert dec(raw, 0, oid) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (1, 1), (-32768, -32768), (2**31 - 1, 2**31 - 1), (2**40, 2**40), (-(2**63), -(2**63)),
    (1.5, 1.5), (float("inf"), "Infinity"), (float("nan"), "NaN"),
    (Decimal("12.340"), "12.340"), (Decimal("-0.000123"), "-0.000123"), (Decimal("100000000"), "100000000"),
    (Decimal("12345678901234567890.0987654321"), "12345678901234567890.0987654321"), (Decimal("0"), "0"),
    (Decimal("NaN"), "NaN"), (True, True), (False, False), ("héllo", "héllo"),
    (b"\x00\x01\xff", "\\x0001ff"), (dt.date(2020, 1, 2), "2020-01-02"), (dt.date(1, 1, 1), "0001-01-01"),
    (dt.date(9999, 12, 31), "9999-12-31"),
    (dt.datetime(2020, 1, 2, 3, 4, 5, 6), "2020-01-02 03:04:05.000006"),
    (dt.datetime(2020, 1, 2, 3, 4, 5), "2020-01-02 03:04:05"),
    (dt.datetime(2020, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC), "2020-01-02 03:04:05.12+00"),
    (dt.time(13, 14, 15, 500000), "13:14:15.5"), (dt.timedelta(days=1, seconds=5), "1 day 00:00:05"),
    (dt.timedelta(microseconds=-1), "-1 days +23:59:59.999999"),  # Python normalises days
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    ([1, 2, None], [1, 2, None]), (["a", None, "c"], ["a", None, "c"]), ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    ([Decimal("1.10")], ["1.10"]), ([dt.date(2020, 1, 2)], ["2020-01-02"]),
])
def test_binary_format_from_psycopg_dumpers(value: object, expected: object) -> None:
    raw, oid = binary(value)
    assert dec(raw, 1, oid) == expected


def test_binary_misc_types() -> None:
    assert dec(struct.pack("!f", 1.1), 1, 700) == 1.1  # shortest float4 text, as PostgreSQL prints it
    assert dec(b"\x01" + b'{"a":1}', 1, 3802) == '{"a":1}'  # jsonb binary: version byte + text
    assert dec(struct.pack("!I", 4000000000), 1, 26) == 4000000000
    assert dec(struct.pack("!i", 0x7FFFFFFF), 1, 1082) == "infinity"
    assert dec(struct.pack("!q", -(2**63)), 1, 1114) == "-infinity"
    assert dec(struct.pack("!qi", 3_600_000_000, -7200), 1, 1266) == "01:00:00+02"
    assert dec(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17", 1, 1007) == []  # empty array: ndim 0
    assert dec(b"\xde\xad", 1, 424242) == "\\xdead"  # unknown type: hex


@pytest.mark.parametrize(("raw", "oid"), [
    (b"\x01\x02\x03", 23), (b"\x01", 20), (b"\x00" * 7, 1114), (b"\x02", 3802), (b"\xff\xfe", 25),
    (b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x0c", 1700),  # two digits announced, one sent
    (b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10", 1700),  # digit 10000 is not base 10000
    (b"\x00\x00\x00\x01\x00\x00", 1007),
    (b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x17\x7f\xff\xff\xff\x00\x00\x00\x01", 1007),
    (b"\x00\x05", 2950),
])
def test_bad_binary_is_hex_with_marker(raw: bytes, oid: int) -> None:
    out = dec(raw, 1, oid)
    assert isinstance(out, str)
    assert out.startswith("\\x" + raw.hex()) and "[invalid" in out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(sorted({*params._BINARY, *params._TEXT, 0, 5, 99999})),
       st.integers(0, 2))
def test_never_raises(raw: bytes, oid: int, fmt: int) -> None:
    json.loads(params.decode_value(raw, fmt, oid, 32))


def test_truncation_marker() -> None:
    assert dec(b"x" * 5000, 0, 25, 1024) == "x" * 1024 + "…[truncated 3976 bytes]"
    out = dec(b"\x01" * 2000, 1, 17, 100)
    assert out == "\\x" + "01" * 100 + "…[truncated 1900 bytes]"


def bind_body(values: list[bytes | None], formats: tuple[int, ...] = ()) -> bytes:
    body = cstr("") + cstr("") + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body + struct.pack("!h", 0)


def test_bind_params_formats_nulls_and_hidden() -> None:
    body = bind_body([b"1", None, struct.pack("!i", 5), b"secret"], (0, 0, 1, 0))
    out = params.bind_params(body, len(body), 2, [23, 25, 23, 25], 1024, frozenset({3}))
    assert json.loads(out) == [1, None, 5, "***"]
    # One format code applies to all; missing OIDs are 0 (text as text).
    body = bind_body([struct.pack("!h", 3), struct.pack("!h", 4)], (1,))
    assert json.loads(params.bind_params(body, len(body), 2, [21], 1024)) == [3, "\\x0004"]


def test_bind_params_cut_by_decoder_keep() -> None:
    body = bind_body([b"a" * 100, b"b" * 100, b"c"])
    kept = body[:60]
    out = json.loads(params.bind_params(kept, len(body), 2, [], 1024))
    assert out[0].startswith("a" * 10) and out[0].endswith("…[truncated 50 bytes]")
    assert out[1] == "…[truncated: 2 more parameters]"


def test_bind_params_malformed_never_raises() -> None:
    for body in [b"", b"\0\0", b"\0\0\xff\xff", b"\0\0\0\0\0\x05\0\0\0\x09ab"]:
        json.loads(params.bind_params(body, len(body), 2, [], 1024))


LIVE = [
    dt.date(2020, 2, 29), dt.date(1, 1, 1), dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
    dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.UTC), dt.time(0, 0, 0, 1), dt.timedelta(days=400, hours=5),
    dt.timedelta(days=-3, seconds=7), dt.timedelta(microseconds=-1500), Decimal("0.00001"), Decimal("-123.4500"),
    Decimal("98765432109876543210.123"), uuid.UUID(int=12345678901234567890),
]


@pytest.mark.parametrize("value", LIVE, ids=[repr(v) for v in LIVE])
def test_binary_decoding_matches_postgresql_text(value: object) -> None:
    """The decoded binary value reads exactly as PostgreSQL prints the same value."""
    raw, oid = binary(value)
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        pg_text = conn.execute("SELECT %b::text", (value,)).fetchone()[0]
    assert dec(raw, 1, oid) == pg_text


def test_interval_months_match_postgresql() -> None:
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        for text in ["1 year 2 mons -3 days +04:05:06.5", "-1 years -2 mons", "14 mons 1 day", "-00:00:01"]:
            row = conn.execute("SELECT %s::interval::text, %s::interval", (text, text), binary=True).fetchone()
            # psycopg cannot dump months, so take the binary form straight from the server
            cur = conn.cursor(binary=True)
            cur.execute("SELECT %s::interval", (text,))
            raw = cur.pgresult.get_value(0, 0)
            assert dec(bytes(raw), 1, 1186) == row[0]
