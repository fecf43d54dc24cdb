"""Tiers: memory → Redis → PostgreSQL; what Redis holds (LZ4 IPC chunks, metadata, TTL); LRU by bytes."""

from __future__ import annotations

import json
from collections.abc import Callable

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import redis

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache.kit import DAY, OTHER_DAY, THIRD_DAY, arrow_rows, pg_rows
from tests.kit.polling import poll
from tests.kit.services import REDIS_URL

Make = Callable[..., GLCache]


def test_tiers_in_order(ledger_db: str, make_cache: Make) -> None:
    cache = make_cache(ledger_db)
    first = cache.get_day(DAY)
    assert cache.stats["loads"] == 1 and cache.stats["misses_redis"] == 1
    cache.flush()
    again = cache.get_day(DAY)
    assert again is first and cache.stats["hits_memory"] == 1 and cache.stats["loads"] == 1

    other_process = make_cache(ledger_db)  # a second cache: empty memory, same Redis
    from_redis = other_process.get_day(DAY)
    assert other_process.stats["hits_redis"] == 1 and other_process.stats["loads"] == 0
    assert arrow_rows(from_redis) == arrow_rows(first) == pg_rows(ledger_db, DAY)
    assert from_redis.schema == first.schema


def test_redis_holds_lz4_ipc_with_metadata_and_ttl(ledger_db: str, make_cache: Make, prefix: str) -> None:
    cache = make_cache(ledger_db, ttl=3600)
    table = cache.get_day(DAY)
    cache.flush()  # the store to Redis runs behind the first read
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}:gl:{{gl_entries}}:{DAY}"
    fields = client.hgetall(key)
    meta = json.loads(fields[b"meta"])
    assert meta["rows"] == table.num_rows
    assert meta["load_seconds"] > 0 and meta["loaded_at"] > 0
    assert ["amount", "decimal128(18, 2)"] in meta["schema"]
    chunks = [fields[name.encode()] for name in meta["chunks"]]
    reader = ipc.open_stream(pa.py_buffer(chunks[0]))
    batch = reader.read_next_batch()
    assert batch.num_rows > 0
    assert b"LZ4" in chunks[0] or meta["bytes"] < meta["arrow_bytes"]  # compressed bodies
    assert 0 < client.pttl(key) <= 3600 * 1000
    client.close()


def test_chunks_stay_under_the_limit(ledger_db: str, make_cache: Make, prefix: str) -> None:
    cache = make_cache(ledger_db, chunk_bytes=1 << 16)
    table = cache.get_day(DAY)
    cache.flush()
    client = redis.Redis.from_url(REDIS_URL)
    fields = client.hgetall(f"{prefix}:gl:{{gl_entries}}:{DAY}")
    meta = json.loads(fields[b"meta"])
    sizes = [len(fields[n.encode()]) for n in meta["chunks"]]
    assert len(sizes) > 3
    # every chunk is under the cap except one holding a single 200 kB value (a row cannot be split)
    assert sum(s > (1 << 16) for s in sizes) <= 1
    client.close()
    fresh = make_cache(ledger_db, chunk_bytes=1 << 16)
    assert arrow_rows(fresh.get_day(DAY)) == arrow_rows(table)


def test_ttl_respected(ledger_db: str, make_cache: Make, prefix: str) -> None:
    cache = make_cache(ledger_db, ttl=1)
    cache.get_day(OTHER_DAY)
    cache.flush()
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}:gl:{{gl_entries}}:{OTHER_DAY}"
    assert poll(lambda: not client.exists(key), 20, interval=0.1), "Redis did not expire the day"
    client.close()
    cache.get_day(OTHER_DAY)  # the memory copy is not served once Redis dropped the day
    assert cache.stats["loads"] == 2


def test_polars_on_request(ledger_db: str, make_cache: Make) -> None:
    df = make_cache(ledger_db).get_day(OTHER_DAY, polars=True)
    assert isinstance(df, pl.DataFrame)
    assert df.height == len(pg_rows(ledger_db, OTHER_DAY))
    assert df.schema["amount"] == pl.Decimal(18, 2)


def test_memory_lru_by_bytes(ledger_db: str, make_cache: Make) -> None:
    small = make_cache(ledger_db).get_day(OTHER_DAY).get_total_buffer_size()
    capacity = int(small * 1.5)
    cache = make_cache(ledger_db, memory_bytes=capacity)
    cache.get_day(OTHER_DAY)
    cache.flush()
    assert cache.memory.days() == [OTHER_DAY]
    cache.get_day(DAY)  # far larger than the tier: not kept, and the small day stays
    cache.flush()
    assert cache.memory.days() == [OTHER_DAY]
    cache.get_day(THIRD_DAY)
    cache.flush()
    assert cache.memory.days() == [THIRD_DAY]  # least recently used went first
    assert cache.memory.nbytes <= capacity


def test_dates_normalised(ledger_db: str, make_cache: Make) -> None:
    import datetime

    cache = make_cache(ledger_db)
    a = cache.get_day(datetime.date(2024, 3, 16))
    b = cache.get_day(" 2024-03-16 ")
    assert a is b
