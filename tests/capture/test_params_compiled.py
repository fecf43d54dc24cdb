"""Bind parameters as JSON text: the compiled one (proxy/_params.c) against the Python one.

Both must give the same str for every Bind body, well-formed or not, so that which one an install has
changes nothing a captured event says. The C one writes the common values itself and hands the rest to
params.py's own decoders; the bodies here mix both, plus the cut, hidden, malformed and garbage cases.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasterdata.proxy import params

pytestmark = pytest.mark.skipif(params.bind_params is params.bind_params_py,
                                reason="proxy._params not built (no C compiler)")

compiled = params.bind_params
reference = params.bind_params_py


def bind_body(values: list[bytes | None], formats: list[int], count: int | None = None) -> bytes:
    """Portal and statement names, format codes, parameters (count defaults to len(values)), no result codes."""
    body = b"p\0s\0" + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values) if count is None else count)
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body + b"\0\0"


POS = 4  # just after the two names above


class Indexes:
    """A hidden container that is neither a set nor a tuple: `in` goes through __contains__."""

    def __init__(self, indexes: frozenset[int]) -> None:
        self.indexes = indexes

    def __contains__(self, i: object) -> bool:
        return i in self.indexes


class Raising:
    """A hidden container whose __contains__ raises: the loop's except clauses decide the result."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __contains__(self, i: object) -> bool:
        raise self.exc("boom")


# What a parameter's bytes may be: integers in every spelling int() takes or refuses, text with what
# JSON escapes, non-ASCII, invalid UTF-8 (lone bytes, surrogates, overlong forms), and anything at all.
digits = st.from_regex(rb"\A[ \t+-]?[-]?0{0,3}[0-9]{0,24}(_[0-9])?[ \n]?\Z")
plain_ints = st.builds(lambda sign, n: (sign + str(n)).encode(), st.sampled_from(["", "-", "-0", "00"]),
                       st.integers(0, 10**20))
texts = st.text(st.characters(codec="utf-8"), max_size=12).map(str.encode)
escapes = st.lists(st.sampled_from([b'"', b"\\", b"\n", b"\r", b"\t", b"\b", b"\f", b"\x00", b"\x1f",
                                    b"\x7f", b"a", b"\xc3\xa9", b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80"]),
                   max_size=8).map(b"".join)
invalid = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"a\x80b"])
sized = st.sampled_from([1, 2, 4, 8, 12, 16]).flatmap(lambda n: st.binary(min_size=n, max_size=n))  # binary widths
long = st.tuples(st.one_of(texts, escapes, invalid), st.integers(1, 300)).map(lambda t: t[0] * t[1])  # past 512 bytes
values = st.one_of(st.none(), digits, plain_ints, texts, escapes, invalid, sized, st.binary(max_size=20), long)
known = sorted({*params._TEXT, *params._BINARY})
oids = st.one_of(st.sampled_from(known), st.sampled_from([0, 5, 99999, -1, 2**32 + 23]))
formats = st.sampled_from([0, 1, 0, 1, 2, -1])
max_bytes = st.one_of(st.integers(0, 12), st.just(1 << 20), st.just(2**70))
hidden = st.one_of(st.none(), st.frozensets(st.integers(0, 6), max_size=3),
                   st.frozensets(st.integers(0, 6), max_size=3).map(tuple),
                   st.frozensets(st.integers(0, 6), max_size=3).map(Indexes))


@st.composite
def binds(draw: st.DrawFn) -> tuple:
    vals = draw(st.lists(values, max_size=6))
    shape = draw(st.sampled_from(["none", "one", "each", "fewer"]))
    fmts = {"none": [], "one": [draw(formats)], "each": [draw(formats) for _ in vals],
            "fewer": [draw(formats) for _ in vals[:-2]] + [0]}[shape]
    count = draw(st.one_of(st.none(), st.integers(-2, 8)))
    body = bind_body(vals, fmts, count)
    length = len(body)
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    if cut is not None:  # the decoder kept a prefix (length says more), or the body itself is short
        body = body[:cut]
        length = draw(st.sampled_from([length, cut, cut + 1]))
    the_oids = draw(st.lists(oids, max_size=7))
    if draw(st.booleans()):
        the_oids = tuple(the_oids)
    return body, length, POS, the_oids, draw(max_bytes), draw(hidden)


def both(*args: object) -> tuple[str, str]:
    return compiled(*args), reference(*args)


@settings(max_examples=max(1500, settings.default.max_examples))  # the fuzz profile may ask more
@given(binds())
def test_compiled_and_python_give_the_same_text(args: tuple) -> None:
    out, ref = both(*args)
    assert out == ref


@given(st.binary(max_size=40), st.integers(-3, 45), st.integers(0, 50), st.lists(oids, max_size=4),
       max_bytes, hidden)
def test_garbage_bodies(body: bytes, pos: int, length: int, the_oids: list, limit: int, hide: object) -> None:
    out, ref = both(body, length, pos, the_oids, limit, hide)
    assert out == ref


@given(st.lists(values, max_size=5), st.sampled_from(known), st.sampled_from([0, 1]))
def test_one_type_for_all(vals: list, oid: int, fmt: int) -> None:
    body = bind_body(vals, [fmt])
    out, ref = both(body, len(body), POS, [oid] * len(vals), 1 << 20, None)
    assert out == ref


@pytest.mark.parametrize(("values", "fmts", "oids", "expected"), [
    ([b"12345"], [], [23], "[12345]"),
    ([b"007", b"-0", b"-000120", b"0"], [], [20, 21, 26, 23], "[7,0,-120,0]"),
    # as int() reads them; int(b"\xd9\xa1") refuses U+0661 (bytes take ASCII digits only): text
    ([b" 12 ", b"+5", b"1_000", b"\xd9\xa1", b"12a"], [], [23] * 5, '[12,5,1000,"\u0661","12a"]'),
    ([b"9" * 25], [], [20], "[" + "9" * 25 + "]"),
    ([struct.pack("!h", -2), struct.pack("!i", -(2**31)), struct.pack("!q", 2**63 - 1),
      struct.pack("!I", 2**32 - 1), b"\x00", b"\x02"], [1], [21, 23, 20, 26, 16, 16],
     f"[-2,{-(2**31)},{2**63 - 1},{2**32 - 1},false,true]"),
    ([b"abc", b"\x01\x02\x03"], [1], [25, 23], '["abc","\\\\x010203[invalid int4]"]'),
    ([b'say "hi"\n\tnow\\'], [], [25], '["say \\"hi\\"\\n\\tnow\\\\"]'),
    (["é…\u2028".encode(), b"\x01\x1f\x7f"], [0], [1043, 0], '["é…\u2028","\\u0001\\u001f\x7f"]'),
    ([None, b"x", None], [], [], '[null,"x",null]'),
    ([b"\xff"], [], [19], '["\\\\xff[invalid text]"]'),
    ([b"1.5", b"t", b"{1,2}"], [], [701, 16, 1007], "[1.5,true,[1,2]]"),
])
def test_common_values(values: list, fmts: list[int], oids: list[int], expected: str) -> None:
    body = bind_body(values, fmts)
    assert both(body, len(body), POS, oids, 1 << 20) == (expected, expected)


def test_hidden_in_any_container() -> None:
    body = bind_body([b"1", b"secret", None, b"3"], [])
    expected = '[1,"***",null,3]'
    for hide in [frozenset({1, 2}), (1, 2), [2, 1], {1: 0, 2: 0}, Indexes(frozenset({1, 2}))]:
        assert both(body, len(body), POS, [23, 25, 23, 23], 1 << 20, hide) == (expected, expected)


def test_cut_values_and_markers() -> None:
    body = bind_body([b"a" * 100, b"b" * 100, b"c"], [])
    for args in [(body[:60], len(body), POS, [], 1024), (body, len(body), POS, [25], 10),
                 (body[:60], 60, POS, [], 1024), (body[:POS + 4], len(body), POS, [], 1024)]:
        out, ref = both(*args)
        assert out == ref
    assert compiled(body[:60], len(body), POS, [], 1024).endswith(',"…[truncated: 2 more parameters]"]')


def test_long_output() -> None:
    body = bind_body([b"x" * 3000, b'"' * 700, "é".encode() * 400, b"\x01" * 300, *[b"123"] * 400], [])
    for limit in (1 << 20, 100):
        out, ref = both(body, len(body), POS, [25] * 4 + [23] * 400, limit)
        assert out == ref and len(out) > 2000


def test_oids_shrinking_under_the_loop() -> None:
    """A hidden container that empties the OID list: oids[i] then fails (IndexError) as in Python."""
    class Clearing:
        def __init__(self, oids: list[int]) -> None:
            self.oids = oids

        def __contains__(self, i: object) -> bool:
            self.oids.clear()
            return False

    body = bind_body([b"1", b"2"], [])
    outs = []
    for fn in (compiled, reference):
        oids = [23, 23]
        outs.append(fn(body, len(body), POS, oids, 1024, Clearing(oids)))
    assert outs == ['["…[malformed Bind]"]'] * 2


def test_errors_inside_the_loop_give_the_same_markers() -> None:
    body = bind_body([b"1", b"2"], [])
    assert both(body, len(body), POS, [23], 1024, Raising(ValueError)) == ('["…[undecodable Bind]"]',) * 2
    assert both(body, len(body), POS, [23], 1024, Raising(IndexError)) == ('["…[malformed Bind]"]',) * 2
    assert both(body, len(body), POS, [23], 1024, Raising(struct.error)) == ('["…[malformed Bind]"]',) * 2
    assert both(body, len(body), POS, [[23]], 1024) == ('["…[undecodable Bind]"]',) * 2  # unhashable OID
    assert both(body, len(body), POS, [23], 1024, 5) == ('["…[undecodable Bind]"]',) * 2  # `in 5`
    for fn in (compiled, reference):
        with pytest.raises(KeyboardInterrupt):
            fn(body, len(body), POS, [23], 1024, Raising(KeyboardInterrupt))


def test_calls_the_c_loop_leaves_to_python() -> None:
    body = bind_body([b"1", b"x" * 30], [])
    for args, kwargs in [((bytearray(body), len(body), POS, [23], 1024), {}),
                         ((memoryview(body), len(body), POS, [23], 1024), {}),
                         ((body, len(body), POS - len(body), [23], 1024), {}),
                         ((body, len(body), POS, [23], -5), {}),
                         ((body, True, POS, [23], 1024), {}),
                         ((body, len(body), POS), {"oids": [23], "max_bytes": 10, "hidden": (1,)}),
                         ((body, len(body), POS, iter([23]), 1024), {})]:
        try:
            ref = reference(*args, **kwargs)
        except Exception as e:  # the compiled one must raise the same
            with pytest.raises(type(e)):
                compiled(*args, **kwargs)
        else:
            assert compiled(*args, **kwargs) == ref
    with pytest.raises(TypeError):
        compiled(body, len(body), POS, [23])
