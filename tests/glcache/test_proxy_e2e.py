"""End to end through the real proxy: a committed write shows in get_day without a full reload; a rolled
back one never does. Skipped (with the reason) while the proxy does not yet capture into the stream."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import psycopg
import redis

from fasterdata.analyzers.glcache.cache import GLCache
from fasterdata.analyzers.glcache.follow import Follower, start_thread
from fasterdata.proxy.streamkeys import stream_name
from tests.glcache.kit import DAY, arrow_rows, drop_prefix, pg_rows
from tests.kit.polling import poll
from tests.kit.services import REDIS_URL

# A column list: the proxy hides the values of an INSERT without one, and a patch from values needs them.
INSERT = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def test_fresh_through_the_proxy(fresh_ledger: str, start_proxy: Callable) -> None:
    proxy = start_proxy()
    dbname = fresh_ledger.split("dbname=")[1]
    client = redis.Redis.from_url(REDIS_URL)
    stream = stream_name(proxy.prefix)
    cache = GLCache(dsn=fresh_ledger, redis=REDIS_URL, prefix=proxy.prefix)
    follower = Follower(cache)
    thread, stop = start_thread(follower)
    try:
        cache.get_day(DAY)
        assert cache.stats["loads"] == 1
        with psycopg.connect(proxy.dsn(dbname), autocommit=True) as conn:
            conn.execute(INSERT, (80001, DAY, "1000", "2000", Decimal("42.42"), "e2e", None, "", "x", "y"))
        assert poll(lambda: client.xlen(stream) > 0, 60), f"the proxy put no events on {stream}"

        assert poll(lambda: 80001 in {r["id"] for r in arrow_rows(cache.get_day(DAY))}), \
            f"insert never reached the cache; follower saw {follower.processed} events"
        assert arrow_rows(cache.get_day(DAY)) == pg_rows(fresh_ledger, DAY)
        assert cache.stats["loads"] == 1  # patched, not reloaded

        with psycopg.connect(proxy.dsn(dbname)) as conn:  # explicit transaction, rolled back
            conn.execute(INSERT, (80002, DAY, "1000", "2000", Decimal("1.00"), None, None, None, None, None))
            conn.rollback()
            conn.execute("UPDATE gl_entries SET amount = 7.77 WHERE id = %s", (101,))
            conn.execute("DELETE FROM gl_entries WHERE id = %s", (102,))
            conn.commit()
        assert poll(lambda: 102 not in {r["id"] for r in arrow_rows(cache.get_day(DAY))})
        rows = {r["id"]: r for r in arrow_rows(cache.get_day(DAY))}
        assert 80002 not in rows
        assert rows[101]["amount"] == Decimal("7.77")
        assert arrow_rows(cache.get_day(DAY)) == pg_rows(fresh_ledger, DAY)
        assert cache.stats["loads"] == 1
    finally:
        stop.set()
        thread.join(10)
        follower.close()
        cache.close()
        client.close()
        drop_prefix(proxy.prefix)
