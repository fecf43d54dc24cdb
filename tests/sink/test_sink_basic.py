"""The sink against the machine's Redis: order, exact fields, batching, MAXLEN, metrics, readiness."""

from __future__ import annotations

import asyncio
import inspect
import random
from pathlib import Path

import pytest
import redis
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from fasterdata.proxy.events import BUNDLE_FIELD, PACKED_FIELD, events_of, unpack
from fasterdata.proxy.sink import SCRIPT_SHA, RedisConnection, RedisTarget, SinkCollector, StreamSink, encode_batch
from fasterdata.proxy.streamkeys import held_key, marker_key, stream_name, trimmed_key
from tests.kit.polling import until
from tests.kit.ports import free_port
from tests.kit.redisserver import RedisServer
from tests.kit.streams import stream_events

from .kit import events, put_in_bursts


def odd_events() -> list[dict[str, str]]:
    """Events that stress the encoding: unicode, empty values, NUL, long text, varying key sets."""
    out = [
        {"v": "1", "sql": "SELECT 'héllo wörld ☃ 𝄞'", "app": ""},
        {"v": "1", "sql": "", "params": "[]"},
        {"only": "x"},
        {"v": "1", "sql": "SELECT $1", "params": '["a\\u0000b"]', "raw": "nul\x00inside"},
        {"v": "1", "sql": "SELECT " + "x" * 100_000},
        {"k" * 300: "long key"},
        {"v": "1", "sql": "line1\nline2\r\n\t", "err": "42P01 relation \"nope\" does not exist"},
    ]
    out += [{"v": "1", "n": str(i), "sql": f"SELECT {i}", "x" + str(i % 3): "y"} for i in range(200)]
    return out


async def test_events_arrive_in_order_with_exact_fields(prefix: str, shared_url: str) -> None:
    sink = StreamSink(shared_url, prefix)
    await sink.start()
    sent = odd_events()
    for i, fields in enumerate(sent):
        sink.put(fields, route=f"s{i % 3}")
        if i % 50 == 0:
            await asyncio.sleep(0)
    await sink.close(10)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert stream_events(client, stream_name(prefix)) == sent
    assert (sink.sent, sink.dropped, sink.spooled, sink.queued) == (len(sent), 0, 0, 0)
    assert sink.deduplicated == 0


async def test_entries_are_bundled_unless_packed_or_flat_is_asked(prefix: str, shared_url: str) -> None:
    """By default an entry holds up to BUNDLE_MAX events of a batch in one field, their field counts then
    their names and values joined with NUL; entry='packed' writes one such event an entry, and an event
    holding a NUL itself goes flat; entry='flat' writes one stream field per event field."""
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    many = events(250)
    sink = StreamSink(shared_url, f"{prefix}:bundled")
    await sink.start()
    for fields in many:  # no await in between: one batch
        sink.put(fields)
    await sink.close(10)
    bundled = [fields for _id, fields in client.xrange(stream_name(f"{prefix}:bundled"))]
    assert [list(fields) for fields in bundled] == [[BUNDLE_FIELD]] * 3
    assert bundled[2][BUNDLE_FIELD] == ",".join(["4"] * 50) + "\x00" + "\x00".join(
        x for e in many[200:] for kv in e.items() for x in kv)
    assert [e for fields in bundled for e in events_of(fields)] == many
    sent = [*events(3), {"v": "1", "sql": "SELECT 'a\x00b'"}]
    for entry in ("packed", "flat"):
        sink = StreamSink(shared_url, f"{prefix}:{entry}", entry=entry)
        await sink.start()
        for fields in sent:
            sink.put(fields)
        await sink.close(10)
    packed = [fields for _id, fields in client.xrange(stream_name(f"{prefix}:packed"))]
    assert [list(fields) for fields in packed] == [[PACKED_FIELD]] * 3 + [["v", "sql"]]
    assert packed[0][PACKED_FIELD] == "\x00".join(x for kv in sent[0].items() for x in kv)
    assert [unpack(fields) for fields in packed] == sent
    assert [fields for _id, fields in client.xrange(stream_name(f"{prefix}:flat"))] == sent
    with pytest.raises(ValueError, match="entry must be one of bundled, packed, flat"):
        StreamSink(shared_url, prefix, entry="json")


@pytest.mark.parametrize("entry", ["flat", "packed", "bundled"])
async def test_resent_batches_are_not_duplicated(prefix: str, shared_url: str, entry: str) -> None:
    """The script's marker: a batch sent again (lost reply, replayed spool) adds only what is missing, also
    when what is missing begins inside what would have been one bundled entry."""
    conn = await RedisConnection.open(RedisTarget.from_url(shared_url), 5)
    stream = stream_name(prefix)
    head = ("EVALSHA", SCRIPT_SHA, 2, stream, marker_key(prefix, None, "test"))
    sent = events(10)
    try:
        assert await conn.request(encode_batch(head, 0, 0, 60, sent[:6], entry)) == 0
        assert await conn.request(encode_batch(head, 0, 0, 60, sent[:6], entry)) == 6  # all there already
        assert await conn.request(encode_batch(head, 3, 0, 60, sent[3:10], entry)) == 3  # overlap: 3 skipped
        assert await conn.request(encode_batch(head, 2, 0, 60, sent[2:5], entry)) == 3  # stale, late: no-op
    finally:
        conn.close()
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert stream_events(client, stream) == sent
    assert client.xlen(stream) == (2 if entry == "bundled" else 10)
    assert 0 < client.ttl(marker_key(prefix, None, "test")) <= 60


@pytest.mark.parametrize("entry", ["bundled", "packed"])
async def test_statements_trimmed_before_a_group_read_them_are_counted(prefix: str, shared_url: str,
                                                                       entry: str) -> None:
    """The cap (stream_maxlen) counts statements, whatever an entry holds, and may take some nobody has
    read: each trim counts them per consumer group, in Redis (`<stream>:trimmed`) and on the proxy's /metrics."""
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    stream = stream_name(prefix)
    for group in ("reader", "idle"):
        client.xgroup_create(stream, group, id="0", mkstream=True)
    sink = StreamSink(shared_url, prefix, maxlen=1000, batch_max=500, entry=entry)
    await sink.start()
    sent = events(21_500)
    for fields in sent[:1500]:
        sink.put(fields)
    await until(lambda: sink.sent == 1500, "the first 1500 sent")
    [(_, got)] = client.xreadgroup("reader", "c", {stream: ">"}, count=100_000)  # what is left of the first 1500
    read = [e for _id, fields in got for e in events_of(fields)]
    assert read == sent[1500 - len(read):1500]
    await put_in_bursts(sink, sent[1500:], 500)
    await sink.close(10)
    kept = stream_events(client, stream)
    assert 1000 - 100 < len(kept) <= 1000 and kept == sent[-len(kept):]
    assert int(client.hget(held_key(stream), "statements")) == len(kept)
    expected = {"idle": len(sent) - len(kept), "reader": len(sent) - len(read) - len(kept)}
    assert expected["reader"] > 19_000 and len(read) < 1500  # both phases trimmed unread statements
    assert {g: int(n) for g, n in client.hgetall(trimmed_key(stream)).items()} == expected
    assert sink.trimmed_unread == sum(expected.values())
    registry = CollectorRegistry()
    registry.register(SinkCollector(sink))
    assert f"fasterdata_sink_trimmed_unread_total {float(sum(expected.values()))}" in generate_latest(registry).decode()


async def test_put_is_a_plain_call_that_never_awaits(prefix: str, shared_url: str) -> None:
    sink = StreamSink(shared_url, prefix)
    assert not inspect.iscoroutinefunction(sink.put)
    await sink.start()
    # 10k puts with no await in between: the sender cannot have run, so all of them sit in memory.
    for fields in events(10_000):
        assert sink.put(fields) is None
    assert sink.queued == 10_000
    await sink.close(10)
    assert sink.sent == 10_000


async def test_batching_under_load_loses_nothing(prefix: str, shared_url: str) -> None:
    sink = StreamSink(shared_url, prefix, batch_max=1000)
    await sink.start()
    sent = events(50_000)
    for i in range(0, len(sent), 500):  # bursts, as protocol callbacks deliver them
        for fields in sent[i:i + 500]:
            sink.put(fields)
        await asyncio.sleep(0)
    await until(lambda: sink.sent == len(sent), "all events sent")
    await sink.close(10)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    got = stream_events(client, stream_name(prefix))
    assert [e["n"] for e in got] == [e["n"] for e in sent]
    assert got == sent
    assert sink.batches <= len(sent) // 100, "events were not batched"
    assert sink.dropped == 0 and sink.spooled == 0


@pytest.mark.parametrize("entry", ["bundled", "packed", "flat"])
async def test_maxlen_keeps_the_newest_statements(prefix: str, shared_url: str, entry: str) -> None:
    """The cap counts statements, not entries; trimming or deleting the stream by hand does not upset it."""
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    stream = stream_name(prefix)

    async def send(sent: list[dict[str, str]]) -> list[dict[str, str]]:
        sink = StreamSink(shared_url, prefix, maxlen=1000, batch_max=500, entry=entry)
        await sink.start()
        await put_in_bursts(sink, sent, 1000)
        await sink.close(10)
        kept = stream_events(client, stream)
        assert kept == sent[-len(kept):]
        return kept

    sent = events(20_000)
    kept = await send(sent)
    assert 1000 - (99 if entry == "bundled" else 0) <= len(kept) <= 1000  # whole entries go
    client.xtrim(stream, maxlen=3)  # by hand: the count no longer matches; it is rescaled
    kept = await send(events(5000, start=20_000))
    assert 1000 - (99 if entry == "bundled" else 0) <= len(kept) <= 1000
    client.delete(stream)
    kept = await send(events(700, start=30_000))
    assert len(kept) == 700


async def test_metrics_and_readiness(prefix: str, shared_url: str) -> None:
    sink = StreamSink(shared_url, prefix)
    registry = CollectorRegistry()
    registry.register(SinkCollector(sink))
    await sink.start()
    for fields in events(300):
        sink.put(fields)
    await until(lambda: sink.sent == 300, "events sent")
    assert sink.readiness() is None and sink.ready and sink.connected
    text = generate_latest(registry).decode()
    assert "fasterdata_sink_sent_total 300.0" in text
    assert "fasterdata_sink_dropped_total 0.0" in text
    assert "fasterdata_sink_queued 0.0" in text
    assert "fasterdata_sink_redis_up 1.0" in text
    assert 'fasterdata_sink_send_seconds_bucket{le="+Inf"}' in text
    assert "fasterdata_sink_send_seconds_count" in text
    await sink.close(10)


async def test_not_ready_without_redis_and_without_spool(prefix: str, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bare = StreamSink(dead, prefix, backoff_min=0.05, backoff_max=0.1)
    spooled = StreamSink(dead, prefix, spool_path=tmp_path / "spool", backoff_min=0.05, backoff_max=0.1)
    await bare.start()
    await spooled.start()
    await until(lambda: bare.lanes[0].health.down_since is not None, "a failed connect")
    await until(lambda: spooled.lanes[0].health.down_since is not None, "a failed connect")
    problem = bare.readiness()
    assert problem is not None and "unreachable" in problem and "no spool" in problem
    assert spooled.readiness() is None  # events have somewhere to go
    spooled.put({"a": "b"})
    assert spooled.spooled == 1
    await bare.close(1)
    await spooled.close(1)
    assert spooled.dropped == 0


async def test_shards_keep_each_session_on_one_stream(prefix: str, shared_url: str) -> None:
    sink = StreamSink(shared_url, prefix, shards=3)
    await sink.start()
    sessions = [f"sess{i}" for i in range(60)]  # hash(route) is per process: 60 leave no stream empty
    sent: dict[str, list[str]] = {s: [] for s in sessions}
    rng = random.Random(7)
    for i in range(3000):
        sid = rng.choice(sessions)
        sink.put({"sid": sid, "n": str(i)}, route=sid)
        sent[sid].append(str(i))
        if i % 200 == 0:
            await asyncio.sleep(0)
    await sink.close(10)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert sink.streams == [stream_name(prefix, i) for i in range(3)]
    seen: dict[str, list[str]] = {s: [] for s in sessions}
    home: dict[str, str] = {}
    for key in sink.streams:
        entries = stream_events(client, key)
        assert entries, f"{key} got nothing"
        for entry in entries:
            assert home.setdefault(entry["sid"], key) == key, "a session was split across streams"
            seen[entry["sid"]].append(entry["n"])
    assert seen == sent


async def test_unix_socket_and_db_number(redis_server, prefix: str) -> None:
    server: RedisServer = redis_server("--unixsocket", "SOCK", "--unixsocketperm", "700")
    sock = server.dir / "SOCK"
    sink = StreamSink(f"unix://{sock}?db=5", prefix)
    await sink.start()
    for fields in events(100):
        sink.put(fields)
    await sink.close(10)
    assert stream_events(server.client(db=5), stream_name(prefix)) == events(100)
    assert server.client(db=0).exists(stream_name(prefix)) == 0


def test_runs_on_uvloop(prefix: str, shared_url: str) -> None:
    async def main() -> list[dict[str, str]]:
        sink = StreamSink(shared_url, prefix)
        await sink.start()
        for fields in events(2000):
            sink.put(fields)
        await sink.close(10)
        return stream_events(redis.Redis.from_url(shared_url, decode_responses=True), stream_name(prefix))

    assert uvloop.run(main()) == events(2000)


def test_bad_url_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamSink("http://127.0.0.1:6379")


async def test_oversized_batches_are_split_and_huge_events_dropped(prefix: str, shared_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fasterdata.proxy.sink.lane.MAX_BATCH_BYTES", 20_000)
    monkeypatch.setattr("fasterdata.proxy.sink.encoding.MAX_FIELDS", 6)
    sink = StreamSink(shared_url, prefix, entry="flat")  # the field limit is Lua's, on flat entries only
    await sink.start()
    sent = [{"n": str(i), "sql": "x" * 1000} for i in range(100)]
    for fields in sent[:50]:
        sink.put(fields)
    sink.put({"n": "huge", "sql": "y" * 50_000})  # alone it is still over the limit: dropped, counted
    sink.put({f"f{i}": str(i) for i in range(10)})  # cut to MAX_FIELDS fields
    for fields in sent[50:]:
        sink.put(fields)
    await sink.close(10)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    got = stream_events(client, stream_name(prefix))
    assert got == [*sent[:50], {f"f{i}": str(i) for i in range(6)}, *sent[50:]]
    assert sink.dropped == 1 and sink.sent == 102
    assert sink.batches > 5  # 100 KB of events in 20 KB commands
