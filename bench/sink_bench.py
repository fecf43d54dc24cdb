"""How should the sink ship events to Redis?  Measures the candidates and prints a table.

Each option sends the same N events of 15 fields (the statement-event shape) in batches, one
batch in flight, on uvloop, to a private redis-server (or --redis URL).  Reported per option:
wall-clock events/s, this process's CPU µs per event (what the proxy's core pays: the number
that matters) and redis-server's CPU µs per event (INFO cpu; what one Redis can absorb).

    .venv/bin/python bench/sink_bench.py [--events 200000] [--batch 1000] [--redis URL]

Wall-clock numbers depend on what else the machine runs; CPU per event is steadier.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from itertools import chain
from pathlib import Path
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import redis_cpu_seconds

from fasterdata.proxy.sink import SCRIPT, SCRIPT_SHA, RedisConnection, RedisTarget, StreamSink, encode_batch
from fasterdata.proxy.streamkeys import held_key, stream_name

MAXLEN = 1_000_000
TTL = 86400


def make_events(n: int) -> list[dict[str, str]]:
    """Statement events as the proxy makes them: 15 flat string fields, ~440 bytes on the wire."""
    base = {
        "v": "1", "ts": "1732165874123456", "dur_us": "153", "sid": "a1b2-17", "client": "127.0.0.1:53412",
        "user": "app", "db": "ledger", "app": "psql", "proto": "extended", "stmt": "s17",
        "sql": "SELECT id, amount, account FROM gl_entries WHERE trx_date = $1 AND account = $2",
        "params": '["2024-11-20", "4000"]', "ptypes": "[1082, 25]", "tag": "SELECT 12", "rows": "12",
    }
    return [dict(base, ts=str(1732165874123456 + i), rows=str(i % 50)) for i in range(n)]


class CountingConnection(RedisConnection):
    """Resolves one future after N replies: the cheapest way to read a pipeline's replies."""

    def __init__(self) -> None:
        super().__init__()
        self.expect = 0
        self.done: asyncio.Future | None = None
        self.errors = 0

    def data_received(self, data: bytes) -> None:
        if self.done is None:
            super().data_received(data)
            return
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                self.errors += 1
            self.expect -= 1
        if self.expect <= 0 and not self.done.done():
            self.done.set_result(None)

    async def pipeline(self, data: bytes, replies: int) -> None:
        self.expect = replies
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        await self.done


async def opt_redispy(url: str, key: str, events: list[dict], batch: int) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for i in range(0, len(events), batch):
            pipe = client.pipeline(transaction=False)
            for fields in events[i:i + batch]:
                pipe.xadd(key, fields, maxlen=MAXLEN, approximate=True)
            await pipe.execute()
    finally:
        await client.aclose()


async def _counting(url: str) -> CountingConnection:
    target = RedisTarget.from_url(url)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(CountingConnection, target.host, target.port)
    if target.db:
        await conn.requests(hiredis.pack_command(("SELECT", target.db)), 1)
    await conn.requests(hiredis.pack_command(("SCRIPT", "LOAD", SCRIPT)), 1)
    return conn


async def opt_packed_xadd(url: str, key: str, events: list[dict], batch: int) -> None:
    conn = await _counting(url)
    pack = hiredis.pack_command
    prefix = ("XADD", key, "MAXLEN", "~", MAXLEN, "*")
    try:
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            data = b"".join([pack(prefix + tuple(chain.from_iterable(f.items()))) for f in chunk])
            await conn.pipeline(data, len(chunk))
        assert conn.errors == 0
    finally:
        conn.close()


def _encode_one_arg_per_value(head: tuple, seq0: int, events: list[dict]) -> bytes:
    """The script's 'a' mode: every value its own RESP bulk string (framed by hiredis in C)."""
    sets: dict[tuple, int] = {}
    ids = [sets.setdefault(tuple(f), len(sets)) for f in events]
    args: list[Any] = [*head, seq0, MAXLEN, TTL, "a", len(sets)]
    for keys in sets:
        args.append(len(keys))
        args.extend(keys)
    args.append(len(events))
    args.extend(ids)
    args.extend(chain.from_iterable(map(dict.values, events)))
    return hiredis.pack_command(tuple(args))


async def _lua(url: str, key: str, events: list[dict], batch: int, encode: Callable[..., bytes]) -> None:
    conn = await _counting(url)
    head = ("EVALSHA", SCRIPT_SHA, 2, key, key + ":bench-marker")
    try:
        for i in range(0, len(events), batch):
            await conn.pipeline(encode(head, i, events[i:i + batch]), 1)
        assert conn.errors == 0
    finally:
        conn.close()


async def opt_lua_args(url: str, key: str, events: list[dict], batch: int) -> None:
    await _lua(url, key, events, batch, _encode_one_arg_per_value)


async def opt_lua_joined(url: str, key: str, events: list[dict], batch: int) -> None:
    await _lua(url, key, events, batch, lambda head, seq0, evs: encode_batch(head, seq0, MAXLEN, TTL, evs))


async def opt_lua_packed(url: str, key: str, events: list[dict], batch: int) -> None:
    await _lua(url, key, events, batch, lambda head, seq0, evs: encode_batch(head, seq0, MAXLEN, TTL, evs, "packed"))


async def opt_lua_bundled(url: str, key: str, events: list[dict], batch: int) -> None:
    await _lua(url, key, events, batch, lambda head, seq0, evs: encode_batch(head, seq0, MAXLEN, TTL, evs, "bundled"))


async def opt_sink(url: str, key: str, events: list[dict], batch: int, entry: str = "bundled") -> None:
    """The real thing: put() in bursts from loop callbacks, the sender ships in the background."""
    prefix = key.rsplit(":", 1)[0]
    sink = StreamSink(url, prefix, batch_max=batch, max_queue=len(events) + 1, entry=entry)
    await sink.start()
    put = sink.put
    burst = 200
    for i in range(0, len(events), burst):
        for fields in events[i:i + burst]:
            put(fields)
        await asyncio.sleep(0)
    while sink.sent < len(events):
        await asyncio.sleep(0.001)
    await sink.close()
    await asyncio.sleep(0)


async def opt_sink_replay(url: str, key: str, events: list[dict], batch: int) -> None:
    """Degraded path, second half: a spool written while Redis was away, replayed by a new sink.

    Only the replay is timed; the spool is written beforehand by ``prepare_spool``.
    """
    prefix = key.rsplit(":", 1)[0]
    sink = StreamSink(url, prefix, batch_max=batch, spool_path=SPOOL_FOR_REPLAY)
    await sink.start()
    while sink.replayed < len(events):
        await asyncio.sleep(0.001)
    await sink.close()


SPOOL_FOR_REPLAY = Path(tempfile.gettempdir()) / f"sinkbench-{os.getpid()}.spool"


async def prepare_spool(events: list[dict]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    sink = StreamSink(f"redis://127.0.0.1:{dead}/0", "fdbench-spool", spool_path=SPOOL_FOR_REPLAY,
                      backoff_min=60, backoff_max=60, spool_max_bytes=1 << 34)
    await sink.start()
    while not sink.lanes[0].spooling:
        await asyncio.sleep(0.01)
    for fields in events:
        sink.put(fields)
    await sink.close(0.1)


OPTIONS: list[tuple[str, Callable[[str, str, list[dict], int], Awaitable[None]]]] = [
    ("redis-py asyncio pipeline, XADD per event", opt_redispy),
    ("hand-packed XADD pipeline + hiredis replies", opt_packed_xadd),
    ("Lua batch, one RESP arg per value", opt_lua_args),
    ("Lua batch, NUL-joined values (flat entries)", opt_lua_joined),
    ("Lua batch, one packed field an entry", opt_lua_packed),
    ("Lua batch, up to 100 events an entry (default)", opt_lua_bundled),
    ("StreamSink end to end, flat entries", lambda *a: opt_sink(*a, entry="flat")),
    ("StreamSink end to end, packed entries", lambda *a: opt_sink(*a, entry="packed")),
    ("StreamSink end to end, bundled entries", opt_sink),
    ("StreamSink replaying a spool (degraded path)", opt_sink_replay),
]


async def measure_put(url: str, events: list[dict]) -> tuple[float, float]:
    """put() cost alone: into the memory queue, and into the spool (Redis unreachable)."""
    sink = StreamSink(url, "fdbench-put", max_queue=len(events) + 1)
    put = sink.put
    t0 = time.perf_counter()
    for fields in events:
        put(fields)
    memory_ns = (time.perf_counter() - t0) / len(events) * 1e9
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        down = StreamSink(f"redis://127.0.0.1:{dead}/0", "fdbench-put", spool_path=Path(tmp) / "spool",
                          backoff_min=60, backoff_max=60)
        await down.start()
        while down.lanes[0].health.up or not down.lanes[0].spooling:
            await asyncio.sleep(0.01)
        put = down.put
        t0 = time.perf_counter()
        for fields in events:
            put(fields)
        spool_ns = (time.perf_counter() - t0) / len(events) * 1e9
        await down.close(0.1)
    return memory_ns, spool_ns


def private_redis(tmp: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


async def run(args: argparse.Namespace, url: str) -> None:
    events = make_events(args.events)
    client = redis.Redis.from_url(url)
    print(f"{args.events} events of {len(events[0])} fields, batches of {args.batch}, one in flight, "
          f"uvloop, redis {client.info('server')['redis_version']}, {os.cpu_count()} cores (shared)\n")
    print(f"{'option':46s} {'events/s':>10s} {'proxy CPU':>11s} {'redis CPU':>11s}")
    print(f"{'':46s} {'(wall)':>10s} {'µs/event':>11s} {'µs/event':>11s}")
    for name, fn in OPTIONS:
        best: tuple[float, float, float] | None = None
        for _ in range(args.repeat):
            key = stream_name(f"fdbench{os.getpid()}")
            client.delete(key, key + ":bench-marker")
            if fn is opt_sink_replay:
                await prepare_spool(events)
            r0, c0, t0 = redis_cpu_seconds(client), time.process_time(), time.perf_counter()
            await fn(url, key, events, args.batch)
            wall, cpu, rcpu = time.perf_counter() - t0, time.process_time() - c0, redis_cpu_seconds(client) - r0
            held = client.hget(held_key(key), "statements")  # the sink script's count (an entry may hold many)
            assert int(held or client.xlen(key)) >= min(args.events, MAXLEN) * 0.99, f"{name}: events missing"
            result = (args.events / wall, cpu / args.events * 1e6, rcpu / args.events * 1e6)
            if best is None or result[1] < best[1]:
                best = result
            for k in client.scan_iter(f"fdbench{os.getpid()}:*"):
                client.delete(k)
        assert best is not None
        print(f"{name:46s} {best[0]:10,.0f} {best[1]:11.2f} {best[2]:11.2f}")
    memory_ns, spool_ns = await measure_put(url, events[: min(len(events), 200_000)])
    print(f"\nput(): {memory_ns:.0f} ns into the memory queue, {spool_ns:.0f} ns into the spool (Redis away)")
    print("(best of", args.repeat, "runs by proxy CPU; wall-clock events/s of that run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", help="use this Redis instead of a private redis-server")
    args = parser.parse_args()
    logging.getLogger("fasterdata.sink").setLevel(logging.ERROR)  # the outage in measure_put is on purpose
    tmp = tempfile.mkdtemp(prefix="sinkbench")
    proc = None
    try:
        if args.redis:
            url = args.redis
        else:
            if not shutil.which("redis-server"):
                sys.exit("redis-server not found; pass --redis URL")
            proc, url = private_redis(tmp)
        uvloop.run(run(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
