"""The sink's bundled-batch encoding: the compiled one (proxy/sink/_bundle.c) against the Python one.

Both must give the same bytes for every batch, and refuse (None) the same batches, so that which one an
install has changes nothing Redis receives. The refusals send encode_batch down its general path.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fasterdata.proxy.sink import encoding

pytestmark = pytest.mark.skipif(encoding.pack_bundled is encoding.pack_bundled_py,
                                reason="proxy.sink._bundle not built (no C compiler)")

# Names and values as events hold them, plus what must be refused: NUL, lone surrogates, non-str values.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
plain = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=12)
values = st.one_of(plain, texts, st.integers(), st.none(), st.binary(max_size=4))
events = st.dictionaries(st.one_of(plain, texts), st.one_of(plain, plain, values), max_size=6)
heads = st.tuples(st.just("EVALSHA"), plain, st.integers(0, 3), plain, st.integers(-2**62, 2**62),
                  st.binary(max_size=8))


@given(heads, st.lists(events, max_size=8))
def test_compiled_and_python_give_the_same_bytes(head: tuple, batch: list[dict]) -> None:
    assert encoding.pack_bundled(head, batch) == encoding.pack_bundled_py(head, batch)


@given(heads, st.lists(st.dictionaries(plain, plain, min_size=1, max_size=6), max_size=8))
def test_batches_of_plain_text_are_packed(head: tuple, batch: list[dict]) -> None:
    packed = encoding.pack_bundled(head, batch)
    assert packed is not None and packed == encoding.pack_bundled_py(head, batch)


@pytest.mark.parametrize("event", [{}, {"sql": "a\0b"}, {"a\0": "b"}, {"sql": "\udc80"}, {"rows": 5},
                                   {"sql": None}], ids=["empty", "nul-value", "nul-name", "surrogate",
                                                        "int-value", "none-value"])
def test_what_cannot_be_packed_is_refused_by_both(event: dict) -> None:
    batch = [{"v": "1", "kind": "stmt"}, event]
    assert encoding.pack_bundled(("EVALSHA", "sha"), batch) is None
    assert encoding.pack_bundled_py(("EVALSHA", "sha"), batch) is None
