"""The GL cache follower (analyzers/glcache/follow.py) with stream_shards = 3 reads and acknowledges every
shard in its own group."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import redis

from fasterdata.analyzers.glcache.follow import Follower, start_thread
from fasterdata.analyzers.keys import shard_keys
from fasterdata.proxy.streamkeys import stream_name
from tests.glcache.kit import DAY, arrow_rows, event, pg_rows
from tests.kit.polling import wait_until
from tests.kit.services import REDIS_URL

SHARDS = 3


def test_follower_reads_every_shard(fresh_ledger: str, make_cache, prefix: str) -> None:
    cache = make_cache(fresh_ledger, stream_shards=SHARDS)
    cache.get_day(DAY)
    client = redis.Redis.from_url(REDIS_URL)
    follower = Follower(cache)
    thread, stop = start_thread(follower)
    streams = [k.statements for k in shard_keys(prefix, SHARDS)]
    try:
        dbname = fresh_ledger.split("dbname=")[1]
        sql = "INSERT INTO gl_entries VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        with psycopg.connect(fresh_ledger, autocommit=True) as conn:
            for i, stream in enumerate(streams):
                params = [80001 + i, DAY, "1000", "2000", f"{i}.25", None, None, None, None, None]
                conn.execute("INSERT INTO gl_entries VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                             [*params[:4], Decimal(params[4]), *params[5:]])
                client.xadd(stream, event(sql, "INSERT", params=params, db=dbname, rows="1", sid=f"s{i}"))
        wait_until(lambda: follower.processed >= SHARDS, "the follower to apply one event from each shard")
        ids = {r["id"] for r in arrow_rows(cache.get_day(DAY))}
        assert {80001, 80002, 80003} <= ids
        assert arrow_rows(cache.get_day(DAY)) == pg_rows(fresh_ledger, DAY)
        assert all(client.xpending(s, "glcache")["pending"] == 0 for s in streams)
        assert not client.exists(stream_name(prefix))  # the unsharded stream is not read (nor created)
    finally:
        stop.set()
        thread.join(10)
        follower.close()
        client.close()
