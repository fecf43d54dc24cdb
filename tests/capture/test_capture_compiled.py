"""The proxy's event counting: the compiled Capture (proxy/_capture.c) against the Python one.

Both must count the same statements, errors and latencies and hand put the same calls, for any events,
so that which one an install has changes nothing /metrics or the sink sees.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fasterdata.proxy import capture

pytestmark = pytest.mark.skipif(capture.Capture is capture.CapturePy,
                                reason="proxy._capture not built (no C compiler)")

maybe = st.one_of(st.none(), st.just(""), st.text(max_size=6))
durations = st.one_of(st.none(), st.just(""), st.integers(0, 20_000_000).map(str))


@st.composite
def events(draw: st.DrawFn) -> dict[str, str]:
    fields = {"kind": draw(st.sampled_from(["stmt", "stmt", "txn_end", None])), "tag": draw(maybe),
              "err": draw(st.one_of(st.none(), st.just(""), st.text("0123456789ABCP", max_size=5))),
              "db": draw(st.one_of(st.none(), st.sampled_from(["shop", "ledger", ""]))),
              "app": draw(st.one_of(st.none(), st.sampled_from(["web", "", "psql"]))),
              "dur_us": draw(durations), "sid": draw(maybe)}
    return {k: v for k, v in fields.items() if v is not None}


def counted(cls: type, batch: list[dict[str, str]], with_put: bool = True) -> tuple:
    calls: list = []
    c = cls((lambda ev, route: calls.append((ev, route))) if with_put else None)
    for ev in batch:
        c.emit(ev)
    return c.statements, c.errors, c.latency, calls


@given(st.lists(events(), max_size=40), st.booleans())
def test_compiled_and_python_count_the_same(batch: list[dict[str, str]], with_put: bool) -> None:
    assert counted(capture.Capture, batch, with_put) == counted(capture.CapturePy, batch, with_put)


def test_pairs_past_the_series_limit_share_one_series_on_both() -> None:
    batch = [{"kind": "stmt", "tag": "SELECT", "db": f"db{i}", "app": "a", "dur_us": str(i * 40)}
             for i in range(capture.MAX_LATENCY_SERIES + 30)]
    compiled, python = counted(capture.Capture, batch), counted(capture.CapturePy, batch)
    assert compiled == python
    assert len(compiled[2]) == capture.MAX_LATENCY_SERIES + 1 and compiled[2][("other", "other")][-1] > 0


def test_an_event_whose_duration_is_not_a_number_raises_on_both() -> None:
    for cls in (capture.Capture, capture.CapturePy):
        with pytest.raises(ValueError):
            cls(None).emit({"kind": "stmt", "dur_us": "soon"})
