"""Redis killed, paused, sleeping or absent: nothing put is lost, duplicated or reordered.

Every test owns a private redis-server (the shared one is never disturbed) and checks the stream
against the exact list of events put: each one once, in put order.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from fasterdata.proxy.sink import StreamSink
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.polling import until
from tests.kit.ports import free_port
from tests.kit.redisserver import RedisServer
from tests.kit.streams import stream_events

from .kit import events

ROOT = Path(__file__).resolve().parents[2]
FAST = {"backoff_min": 0.02, "backoff_max": 0.2}


class Producer:
    """Puts numbered events in bursts between loop turns, like protocol callbacks would."""

    def __init__(self, sink: StreamSink, burst: int = 50) -> None:
        self.sink = sink
        self.burst = burst
        self.n = 0

    def put(self, count: int) -> None:
        for fields in events(count, self.n):
            self.sink.put(fields)
        self.n += count

    async def run(self, count: int) -> None:
        for _ in range(0, count, self.burst):
            self.put(self.burst)
            await asyncio.sleep(0.002)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Keep producing until ``condition`` holds (a hang guard, no speed asserted)."""
        for _ in range(20_000):
            if condition():
                return
            self.put(self.burst)
            await asyncio.sleep(0.002)
        raise AssertionError(f"gave up producing until {what}")


def assert_exactly_once_in_order(client: redis.Redis, key: str, count: int) -> None:
    got = stream_events(client, key)
    numbers = [int(e["n"]) for e in got]
    missing = sorted(set(range(count)) - set(numbers))
    assert not missing, f"{len(missing)} events missing, first {missing[:5]}"
    assert len(numbers) == count, f"{len(numbers) - count} duplicates"
    assert numbers == list(range(count)), "events out of order"
    assert got == events(count)


async def test_redis_killed_and_restarted_mid_stream(redis_server, prefix: str, tmp_path: Path) -> None:
    server: RedisServer = redis_server("--appendonly", "yes", "--appendfsync", "always")
    sink = StreamSink(server.url, prefix, spool_path=tmp_path / "spool", send_timeout=1, connect_timeout=1, **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(3000)
    server.kill()  # SIGKILL, whatever is in flight
    await producer.until(lambda: sink.spooled >= 2000, "events are spooled")
    assert not sink.connected and sink.ready  # the spool takes them: still ready
    server.restart()  # same port, same directory: the AOF brings back what Redis confirmed
    await producer.run(3000)
    await until(lambda: sink.sent == producer.n and sink.spool_events == 0, "everything sent")
    await sink.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), producer.n)
    assert sink.spooled == sink.replayed > 0
    assert sink.dropped == 0 and sink.send_errors >= 0
    assert not (tmp_path / "spool").exists()  # drained spools are removed at close


async def test_paused_redis_sigstop(redis_server, prefix: str, tmp_path: Path) -> None:
    server: RedisServer = redis_server()
    sink = StreamSink(server.url, prefix, spool_path=tmp_path / "spool", send_timeout=0.3, connect_timeout=0.3,
                      **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(2000)
    server.pause()
    await producer.until(lambda: sink.spooled >= 2000, "events are spooled while redis is stopped")
    assert sink.send_errors > 0
    server.resume()
    await producer.run(2000)
    await until(lambda: sink.sent == producer.n and sink.spool_events == 0, "everything sent")
    await sink.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), producer.n)
    assert sink.spooled == sink.replayed and sink.dropped == 0


async def test_debug_sleep_slow_redis(redis_server, prefix: str, tmp_path: Path) -> None:
    server: RedisServer = redis_server("--enable-debug-command", "yes")
    sink = StreamSink(server.url, prefix, spool_path=tmp_path / "spool", send_timeout=0.3, connect_timeout=0.3,
                      **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(1000)
    sleeper = asyncio.create_task(asyncio.to_thread(server.client().execute_command, "DEBUG", "SLEEP", "2"))
    await producer.until(lambda: sink.spooled > 0, "events are spooled while redis sleeps")
    await sleeper
    await producer.run(1000)
    await until(lambda: sink.sent == producer.n and sink.spool_events == 0, "everything sent")
    await sink.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), producer.n)
    assert sink.send_errors > 0 and sink.spooled == sink.replayed and sink.dropped == 0


async def test_close_with_redis_down_spools_the_queue(redis_server, prefix: str, tmp_path: Path) -> None:
    server: RedisServer = redis_server("--appendonly", "yes", "--appendfsync", "always")
    spool = tmp_path / "spool"
    sink = StreamSink(server.url, prefix, spool_path=spool, send_timeout=0.5, connect_timeout=0.5, **FAST)
    await sink.start()
    producer = Producer(sink)
    producer.put(1000)
    await until(lambda: sink.sent == 1000, "first events sent")
    server.kill()
    producer.put(500)  # no await: they are in memory when close() starts
    assert sink.queued == 500
    await sink.close(2)
    assert (sink.spooled, sink.dropped, sink.queued) == (500, 0, 0)
    assert spool.exists()
    server.restart()
    second = StreamSink(server.url, prefix, spool_path=spool, **FAST)
    await second.start()
    await until(lambda: second.replayed == 500, "the spool replayed")
    await second.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), 1500)


async def test_queue_overflow_while_slow_then_close(redis_server, prefix: str, tmp_path: Path) -> None:
    """Memory older than the spool at close: it must land *before* the spooled events."""
    server: RedisServer = redis_server()
    spool = tmp_path / "spool"
    sink = StreamSink(server.url, prefix, spool_path=spool, max_queue=200, batch_max=100, send_timeout=60,
                      connect_timeout=1, **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(300)  # in bursts smaller than the queue: nothing overflows yet
    await until(lambda: sink.sent == 300, "first events sent")
    assert sink.spooled == 0
    server.pause()
    producer.put(100)
    await until(lambda: sink.lanes[0].in_flight, "a batch in flight to the stopped server")
    producer.put(500)  # 200 fill the queue, 300 overflow into the spool
    assert sink.queued == 300 and sink.spooled == 300
    await sink.close(0.5)  # gives up waiting: the in-flight batch and the queue go in front
    assert (sink.spooled, sink.dropped) == (600, 0)
    server.resume()
    second = StreamSink(server.url, prefix, spool_path=spool, **FAST)
    await second.start()
    await until(lambda: second.sent == 600, "the spool replayed")
    await second.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), 900)


async def test_spool_full_drops_are_counted_exactly(prefix: str, shared_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sink = StreamSink(f"redis://127.0.0.1:{free_port()}/0", prefix, spool_path=spool, spool_max_bytes=20_000,
                      max_queue=100, **FAST)
    await sink.start()
    await until(lambda: sink.lanes[0].spooling, "the first connect to fail")
    total = 2000
    for fields in events(total):
        sink.put(fields)
    assert sink.spooled > 0 and sink.dropped > 0
    assert sink.spooled + sink.dropped == total
    assert sink.readiness() is not None  # no Redis and a full spool: not ready
    await sink.close(1)
    assert sink.spooled + sink.dropped == total
    kept = sink.spooled
    second = StreamSink(shared_url, prefix, spool_path=spool)
    await second.start()
    await until(lambda: second.replayed == kept, "the spool replayed")
    await second.close(5)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert stream_events(client, stream_name(prefix)) == events(kept)  # equal sizes: the drops are the tail
    assert second.sent == kept and second.dropped == 0
    assert not spool.exists()


async def test_spool_write_failure_counts_what_it_lost(prefix: str, shared_url: str, tmp_path: Path) -> None:
    """A write the disk refuses (here a file-size limit: EFBIG, as a full disk gives ENOSPC) loses the
    events buffered for it; they must be counted as dropped, and none of them may half-survive."""
    spool = tmp_path / "spool"
    sink = StreamSink(f"redis://127.0.0.1:{free_port()}/0", prefix, spool_path=spool, max_queue=10, **FAST)
    await sink.start()
    await until(lambda: sink.lanes[0].spooling or sink.spooled, "the first connect to fail")
    first, total = 200, 5000  # the first flush fits under the limit, the next one does not
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        for fields in events(first):
            sink.put(fields)
        await until(lambda: spool.stat().st_size > 8 << 10, "the first events to reach the file")
        for fields in events(total - first, first):  # no await: one buffer, flushed when it is full
            sink.put(fields)
        await asyncio.sleep(0.05)
        assert sink.readiness() is not None and "spool failed" in sink.readiness()
        assert spool.stat().st_size <= 64 << 10
        await sink.close(1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    kept = total - sink.dropped
    second = StreamSink(shared_url, prefix, spool_path=spool)
    await second.start()
    await until(lambda: second.replayed >= kept, "the spool replayed")
    await second.close(5)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert stream_events(client, stream_name(prefix)) == events(kept)
    assert kept == first  # the refused buffer is cut back whole: no torn record, no event counted twice


async def test_wait_for_a_replica(redis_server, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """wait_replicas=1 on a Redis with no replica: nothing counts as sent, events wait in the spool and the
    log says why; once a replica attaches, every event arrives once, in order."""
    primary: RedisServer = redis_server()
    spool = tmp_path / "spool"
    sink = StreamSink(primary.url, prefix, spool_path=spool, wait_replicas=1, wait_timeout=0.2, **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(300)
    await until(lambda: sink.spooled > 0, "unconfirmed events to go to the spool")
    assert sink.sent == 0
    assert "0 of 1 replicas acknowledged a batch" in caplog.text
    replica: RedisServer = redis_server("--replicaof", "127.0.0.1", str(primary.port))
    await producer.run(200)
    await until(lambda: sink.sent + sink.deduplicated >= 500 and sink.queued == 0 and not sink.spool_events,
                "everything confirmed by the replica")
    await sink.close(5)
    assert_exactly_once_in_order(primary.client(), stream_name(prefix), 500)
    await until(lambda: len(stream_events(replica.client(), stream_name(prefix))) == 500, "the replica's copy")


CRASHER = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
from fasterdata.proxy.sink import StreamSink
from tests.sink.kit import events

async def main():
    sink = StreamSink({url!r}, {prefix!r}, spool_path={spool!r}, backoff_min=60, backoff_max=60)
    await sink.start()
    for fields in events({count}):
        sink.put(fields)
    while sink.spooled < {count}:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a loop turn writes the spool buffer out
    os._exit(3)  # crash: no close()

asyncio.run(main())
"""


async def test_spool_left_by_a_crash_is_replayed_at_start(prefix: str, shared_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = CRASHER.format(root=str(ROOT), url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix,
                            spool=str(spool), count=3000)
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    whole = spool.stat().st_size
    with open(spool, "ab") as f:  # a torn record, as a crash mid-write leaves
        f.write(b"\x40\x00\x00\x00\x12\x34\x56\x78Eorphan")
    sink = StreamSink(shared_url, prefix, spool_path=spool)
    await sink.start()
    assert os.path.getsize(spool) == whole  # the torn tail was cut before anything was appended
    for fields in events(1000, 3000):  # new events go behind the old spool
        sink.put(fields)
    await until(lambda: sink.sent == 4000, "old spool and new events sent")
    await sink.close(5)
    assert sink.replayed >= 3000
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    assert_exactly_once_in_order(client, stream_name(prefix), 4000)


async def test_two_processes_cannot_share_a_spool(prefix: str, shared_url: str, tmp_path: Path) -> None:
    first = StreamSink(shared_url, prefix, spool_path=tmp_path / "spool")
    await first.start()
    second = StreamSink(shared_url, prefix, spool_path=tmp_path / "spool")
    try:
        await second.start()
    except OSError as exc:
        assert "in use by another process" in str(exc)
    else:
        raise AssertionError("a second sink opened a locked spool")
    await first.close(5)


async def test_script_flush_is_survived(redis_server, prefix: str) -> None:
    server: RedisServer = redis_server()
    sink = StreamSink(server.url, prefix, **FAST)
    await sink.start()
    producer = Producer(sink)
    await producer.run(500)
    await until(lambda: sink.sent == 500, "first events sent")
    server.client().script_flush()  # an operator, or a failover to a server without the script
    await producer.run(500)
    await until(lambda: sink.sent == 1000, "the rest sent")
    await sink.close(5)
    assert_exactly_once_in_order(server.client(), stream_name(prefix), 1000)
    assert sink.send_errors >= 1 and sink.spooled == 0


async def test_sharded_lanes_spool_and_replay(prefix: str, shared_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = StreamSink(f"redis://127.0.0.1:{free_port()}/0", prefix, shards=2, spool_path=spool, **FAST)
    await down.start()
    await until(lambda: all(lane.spooling for lane in down.lanes), "both lanes spooling")
    sent = [{"sid": f"s{i % 40}", "n": str(i)} for i in range(1000)]  # 40 sessions: both lanes get some
    for fields in sent:
        down.put(fields, route=fields["sid"])
    await down.close(1)
    assert down.spooled == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.0", "spool.1"]
    up = StreamSink(shared_url, prefix, shards=2, spool_path=spool)
    await up.start()
    await until(lambda: up.replayed == 1000, "both spools replayed")
    await up.close(5)
    client = redis.Redis.from_url(shared_url, decode_responses=True)
    got = [e for key in up.streams for e in stream_events(client, key)]
    for sid in {f["sid"] for f in sent}:
        assert [e for e in got if e["sid"] == sid] == [f for f in sent if f["sid"] == sid]
    assert not list(tmp_path.iterdir())
