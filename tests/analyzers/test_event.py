"""Event fields: params decoding takes a fast path for the proxy's compact arrays and agrees with json.loads;
entries decode alike in either form a reader gets them; the stream and marker names readers share."""

from __future__ import annotations

import json

import pytest

from fasterdata.analyzers import event
from fasterdata.analyzers.keys import Keys
from fasterdata.proxy import streamkeys
from fasterdata.proxy.events import BUNDLE_FIELD, PACKED_FIELD, bundle, pack


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


def test_stream_and_marker_names_are_the_ones_proxies_and_readers_share() -> None:
    """The key contract spelled out: a renamed key would strand every reader of a running deployment."""
    assert streamkeys.stream_names("fd", 1) == ["fd:statements"]
    assert streamkeys.stream_names("fd", 3) == ["fd:statements:{0}", "fd:statements:{1}", "fd:statements:{2}"]
    assert streamkeys.streams_label("fd", 3) == "fd:statements:{0..2}"
    assert streamkeys.other_layout_streams("fd", 2) == ["fd:statements:{2}", "fd:statements"]
    assert streamkeys.other_layout_streams("fd", 1) == ["fd:statements:{0}"]
    assert streamkeys.held_key("fd:statements:{1}") == "fd:statements:{1}:held"
    assert streamkeys.trimmed_key("fd:statements") == "fd:statements:trimmed"
    assert streamkeys.marker_key("fd", None, "abc") == "fd:sink:{fd:statements}:abc"
    assert streamkeys.marker_key("fd", 2, "abc") == "fd:sink:{2}:abc"
    assert [Keys("fd").statements, Keys("fd", 1).held, Keys("fd", 1).trimmed] == [
        "fd:statements", "fd:statements:{1}:held", "fd:statements:{1}:trimmed"]


@pytest.mark.parametrize("entry", [
    [{"v": "1", "sql": "SELECT 1"}, {"v": "1", "sql": "BEGIN", "txn": "open"}],  # bundled
    [{"v": "1", "sql": "SELECT 1"}],  # packed
    [{"v": "1", "sql": "SELECT\x001"}],  # flat: a NUL in a value keeps it unpacked
])
def test_entries_decode_alike_as_a_dict_or_as_redis_sends_them(entry: list[dict[str, str]]) -> None:
    if len(entry) > 1:
        fields = {BUNDLE_FIELD: bundle(entry)}
    elif (packed := pack(entry[0])) is not None:
        fields = {PACKED_FIELD: packed}
    else:
        fields = entry[0]
    flat = [x for kv in fields.items() for x in kv]
    assert event.events_of(fields) == event.events_of(flat) == entry


def test_a_damaged_bundle_is_refused_in_either_form() -> None:
    value = "3,2\x00v\x001"
    for fields in ({BUNDLE_FIELD: value}, [BUNDLE_FIELD, value]):
        with pytest.raises(event.BadBundle):
            event.events_of(fields)
