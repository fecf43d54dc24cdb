"""Event fields: params decoding takes a fast path for the proxy's compact arrays and agrees with json.loads."""

from __future__ import annotations

import json

import pytest

from fasterdata.analyzers import event


@pytest.mark.parametrize("raw", [
    '[1, "a", 2.5, null, true, "12.50"]', "[]", ' [1, 2] ', '[1]\n', '["\\u00e9", {"k": [1]}]', "[NaN, -Infinity]",
])
def test_params_decode_as_json_loads_does(raw: str) -> None:
    got = event.params({"params": raw})
    assert json.dumps(got) == json.dumps(json.loads(raw))


@pytest.mark.parametrize(("raw", "why"), [
    ("[1]x", "not JSON"), ("[1,", "not JSON"), ("x", "not JSON"), ("[1] [2]", "not JSON"),
    ('{"a": 1}', "not a JSON array"), ("5", "not a JSON array"), ('"s"', "not a JSON array"),
])
def test_params_that_are_not_one_json_array_are_bad_events(raw: str, why: str) -> None:
    with pytest.raises(event.BadEvent, match=why):
        event.params({"params": raw})


def test_absent_or_empty_params_are_none() -> None:
    assert event.params({}) is None
    assert event.params({"params": ""}) is None
