"""The compiled inner loop of the framer (proxy/_framescan.c) against the Python one it replaces.

Both framers get the same byte stream cut at the same places; they must return the same messages and
refuse the same bytes. Streams mix wanted and unwanted types, bodies over `keep`, lengths over
`max_message` or under 4, and cuts inside headers and bodies.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasterdata.proxy import wire

pytestmark = pytest.mark.skipif(wire._scan is None, reason="proxy._framescan was not built (no C compiler)")

WANTED = "QPBEDCSZ1"


def frame(typ: int, body: bytes, length: int | None = None) -> bytes:
    return bytes([typ]) + struct.pack("!I", len(body) + 4 if length is None else length) + body


messages = st.one_of(
    st.builds(frame, st.sampled_from(b"QPBEDCSZ1dDTXHp"), st.binary(max_size=40)),
    st.builds(frame, st.integers(0, 255), st.binary(max_size=8)),
    st.builds(lambda t, n: frame(t, b"", n), st.sampled_from(b"QD"), st.sampled_from([0, 3, 0xFFFFFFFF, 1 << 31])),
)


def run(framer: wire._Framer, chunks: list[bytes]) -> tuple[list[wire.Message], str | None]:
    out: list[wire.Message] = []
    try:
        for chunk in chunks:
            framer._typed(chunk, out)
    except wire.ProtocolViolation as exc:
        return out, str(exc)
    return out, None


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


@settings(max_examples=400, deadline=None)
@given(st.lists(messages, max_size=12), st.lists(st.integers(0, 10_000), max_size=6),
       st.sampled_from([4, 16, 1 << 20]), st.sampled_from([64, 1 << 20]))
def test_compiled_and_python_framers_agree(msgs: list[bytes], points: list[int], keep: int, max_message: int) -> None:
    chunks = cut(b"".join(msgs), points)
    compiled = wire._Framer(WANTED, max_message, keep)
    python = wire._Framer(WANTED, max_message, keep, scan=None)
    assert compiled._scan is not None
    assert run(compiled, chunks) == run(python, chunks)


def test_memoryview_and_bytearray_chunks() -> None:
    data = frame(ord("Q"), b"select 1\x00") + frame(ord("D"), b"row") + frame(ord("Z"), b"I")
    for chunk in (data, bytearray(data), memoryview(data)):
        out: list[wire.Message] = []
        wire._Framer("QZ", 1 << 20, 1 << 20)._typed(chunk, out)
        assert out == [(ord("Q"), b"select 1\x00", 9), (ord("Z"), b"I", 1)]


def test_scan_stops_in_front_of_what_python_must_judge() -> None:
    table = bytes(t in b"QZ" for t in range(256))
    whole = frame(ord("Q"), b"abc")
    out: list[wire.Message] = []
    assert wire._scan(whole + frame(ord("Q"), b"", 3), 0, table, 100, 100, out) == len(whole)  # length < 4
    assert wire._scan(whole + frame(ord("Q"), b"x" * 200), 0, table, 100, 100, out) == len(whole)  # > max
    assert wire._scan(whole + frame(ord("Q"), b"abc")[:6], 0, table, 100, 100, out) == len(whole)  # partial
    assert out == [(ord("Q"), b"abc", 3)] * 3
    with pytest.raises(ValueError):
        wire._scan(whole, 0, b"short", 100, 100, out)
