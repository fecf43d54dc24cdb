"""The standalone follower: reads <prefix>:statements in group glcache and keeps days fresh."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import psycopg
import redis

from fasterdata.analyzers.glcache.cache import GLCache
from fasterdata.analyzers.glcache.follow import Follower, start_thread
from fasterdata.proxy.streamkeys import stream_name
from tests.glcache.kit import DAY, arrow_rows, event, pg_rows
from tests.kit.polling import poll
from tests.kit.services import REDIS_URL

Make = Callable[..., GLCache]


def test_follower_applies_stream_events(fresh_ledger: str, make_cache: Make, prefix: str) -> None:
    cache = make_cache(fresh_ledger)
    cache.get_day(DAY)
    client = redis.Redis.from_url(REDIS_URL)
    follower = Follower(cache)
    thread, stop = start_thread(follower)
    try:
        sql = "INSERT INTO gl_entries VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        params = [70001, DAY, "1000", "2000", "5.55", None, None, None, None, None]
        with psycopg.connect(fresh_ledger, autocommit=True) as conn:
            conn.execute("INSERT INTO gl_entries VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         [*params[:4], Decimal("5.55"), *params[5:]])
        dbname = fresh_ledger.split("dbname=")[1]
        client.xadd(stream_name(prefix), event(sql, "INSERT", params=params, db=dbname, rows="1"))
        rolled = event("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount) "
                       "VALUES (70002, '2024-03-15', '1', '2', 1)", "INSERT", db=dbname, rows="1",
                       txn="rolled_back")
        client.xadd(stream_name(prefix), rolled)
        poll(lambda: follower.processed >= 2, 15, interval=0.02)
        assert follower.processed == 2
        ids = {r["id"] for r in arrow_rows(cache.get_day(DAY))}
        assert 70001 in ids and 70002 not in ids
        assert arrow_rows(cache.get_day(DAY)) == pg_rows(fresh_ledger, DAY)
        assert cache.stats["loads"] == 1
        pending = client.xpending(stream_name(prefix), "glcache")
        assert pending["pending"] == 0
    finally:
        stop.set()
        thread.join(10)
        follower.close()
        client.close()
