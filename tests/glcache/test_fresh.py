"""Freshness from constructed statement events (the exact stream contract): patch, re-read, invalidate.

Each test writes to PostgreSQL directly, then feeds the event the proxy would have captured, and checks
that get_day equals PostgreSQL again — without a full reload where the event says enough.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache.kit import DAY, OTHER_DAY, arrow_rows, event, execute, pg_rows, same

Make = Callable[..., GLCache]


@pytest.fixture
def warm(fresh_ledger: str, make_cache: Make) -> tuple[str, GLCache]:
    cache = make_cache(fresh_ledger)
    cache.get_day(DAY)
    cache.get_day(OTHER_DAY)
    cache.flush()
    assert cache.stats["loads"] == 2
    return fresh_ledger, cache


def test_insert_literal_values_patches(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5) "
           "VALUES (90001, '2024-03-15', '1000', '2000', 10.005, 'it''s', NULL, '', 'x', 'y'), "
           "(90002, DATE '2024-03-16', '1001', '2001', -3, NULL, NULL, NULL, NULL, NULL)")
    execute(dsn, sql)
    assert cache.apply_event(event(sql, "INSERT 0 2")) == "patched"
    assert same(dsn, cache) and same(dsn, cache, OTHER_DAY)
    got = {r["id"]: r for r in arrow_rows(cache.get_day(DAY))}
    assert got[90001]["amount"] == Decimal("10.01")  # rounded half away from zero, as PostgreSQL does
    assert cache.stats["loads"] == 2  # patched, not reloaded
    other = make_other_cache(cache)
    assert arrow_rows(other.get_day(DAY)) == pg_rows(dsn, DAY)  # another process sees the patch via Redis
    other.close()


def make_other_cache(cache: GLCache) -> GLCache:
    return GLCache(cache.settings)


def test_insert_bound_params_patches(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
    params = [90003, "2024-03-15", "1003", "2003", "123456.78", "p\nq", None, "with,comma", '"q"', ""]
    execute(dsn, "INSERT INTO gl_entries VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [*params[:4], Decimal(params[4]), *params[5:]])
    ev = event(sql, "INSERT 0 1", params=params, ptypes=[20, 1082, 1043, 1043, 1700, 25, 25, 25, 25, 25])
    assert cache.apply_event(ev) == "patched"
    assert same(dsn, cache)
    assert cache.stats["loads"] == 2 and cache.stats.get("rereads", 0) == 0


def test_insert_with_defaults_rereads_by_key(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    execute(dsn, "ALTER TABLE gl_entries ALTER COLUMN t_5 SET DEFAULT 'dflt'")
    cache.forget_info()
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount) "
           "VALUES (90004, '2024-03-15', '1', '2', 5)")
    execute(dsn, sql)
    assert cache.apply_event(event(sql, "INSERT 0 1")) == "patched"
    assert cache.stats["rereads"] == 1
    assert same(dsn, cache)
    assert cache.stats["loads"] == 2


def test_insert_select_reads_the_new_rows(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = ("INSERT INTO gl_entries SELECT id + 5000000, trx_date, acc_debit, acc_credit, amount, "
           "t_1, t_2, t_3, t_4, t_5 FROM gl_entries WHERE id < 50 OR id > 1000040")
    execute(dsn, sql)
    assert cache.apply_event(event(sql, "INSERT 0 15")) == "patched"  # every cached day's tail
    assert same(dsn, cache) and same(dsn, cache, OTHER_DAY)
    assert cache.stats["loads"] == 2 and cache.stats["tail_reads"] == 2


def test_update_by_id_rereads_and_moves_days(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = "UPDATE gl_entries SET amount = amount * 2, t_1 = NULL WHERE id = $1"
    execute(dsn, "UPDATE gl_entries SET amount = amount * 2, t_1 = NULL WHERE id = %s", [101])
    assert cache.apply_event(event(sql, "UPDATE 1", params=[101], ptypes=[20])) == "patched"
    assert same(dsn, cache)
    sql2 = "UPDATE gl_entries SET trx_date = '2024-03-16' WHERE id IN (102, 103)"
    execute(dsn, sql2)
    assert cache.apply_event(event(sql2, "UPDATE 2")) == "patched"
    assert same(dsn, cache) and same(dsn, cache, OTHER_DAY)
    assert cache.stats["loads"] == 2


def test_update_arbitrary_where_invalidates_that_day(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = "UPDATE gl_entries SET t_2 = 'changed' WHERE trx_date = '2024-03-16' AND amount > 10"
    execute(dsn, sql)
    assert cache.apply_event(event(sql, "UPDATE 40")) == "invalidated"
    assert cache.fresh.last_invalidated == [OTHER_DAY]
    assert same(dsn, cache, OTHER_DAY) and same(dsn, cache)
    assert cache.stats["loads"] == 3  # only the pinned day was read again


def test_delete_by_id_patches_any_day(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = "DELETE FROM gl_entries WHERE id = ANY($1)"
    execute(dsn, "DELETE FROM gl_entries WHERE id = ANY(%s)", [[1, 2, 1000001]])
    assert cache.apply_event(event(sql, "DELETE 3", params=[[1, 2, 1000001]])) == "patched"
    assert same(dsn, cache) and same(dsn, cache, OTHER_DAY)
    assert cache.stats["loads"] == 2


def test_delete_arbitrary_where_invalidates(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = "DELETE FROM gl_entries WHERE t_3 = 'P7'"
    execute(dsn, sql)
    assert cache.apply_event(event(sql, "DELETE 4")) == "invalidated"
    assert same(dsn, cache) and same(dsn, cache, OTHER_DAY)


def test_rolled_back_and_failed_never_apply(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount) "
           "VALUES (90010, '2024-03-15', '1', '2', 1)")
    assert cache.apply_event(event(sql, "INSERT 0 1", txn="rolled_back")) == "ignored"
    assert cache.apply_event(event(sql, "", err="23505", errmsg="duplicate key")) == "ignored"
    assert 90010 not in {r["id"] for r in arrow_rows(cache.get_day(DAY))}
    assert same(dsn, cache)


def test_open_transaction_applies_on_commit(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount) "
           "VALUES (90011, '2024-03-15', '1', '2', 1)")
    assert cache.apply_event(event(sql, "INSERT 0 1", txn="open", txid="55")) == "ignored"
    execute(dsn, sql)
    end = {"v": "1", "kind": "txn_end", "sid": "s1", "txid": "55", "txn": "committed", "stmts": "1"}
    assert cache.apply_event(end) == "patched"  # the day's new rows, read at commit
    assert same(dsn, cache)
    assert cache.stats["loads"] == 2
    assert cache.apply_event(event(sql, "INSERT 0 1", txn="open", txid="56")) == "ignored"
    assert cache.apply_event({**end, "txid": "56", "txn": "rolled_back"}) == "ignored"


def test_copy_reads_the_new_rows_and_truncate_invalidates(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    copy_sql = "COPY gl_entries (id, trx_date, acc_debit, acc_credit, amount) FROM STDIN"
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor().copy(copy_sql) as cp:
        cp.write_row((95000, DAY, "1", "2", Decimal("7.77")))
    assert cache.apply_event(event(copy_sql, "COPY 1")) == "patched"
    assert same(dsn, cache)
    assert cache.stats["loads"] == 2
    execute(dsn, "TRUNCATE gl_entries")
    assert cache.apply_event(event("TRUNCATE gl_entries", "TRUNCATE TABLE")) == "invalidated"
    assert cache.get_day(DAY).num_rows == 0


def test_unrelated_statements_ignored(warm: tuple[str, GLCache]) -> None:
    _, cache = warm
    assert cache.apply_event(event("SELECT * FROM gl_entries WHERE id = 1", "SELECT 1")) == "ignored"
    assert cache.apply_event(event("INSERT INTO other_table VALUES (1)", "INSERT 0 1")) == "ignored"
    assert cache.apply_event(event("UPDATE gl_entries SET amount = 0 WHERE id = 1", "UPDATE 0")) == "ignored"
    sql = "DELETE FROM gl_entries WHERE id = 3"
    assert cache.apply_event(event(sql, "DELETE 1", db="some_other_database")) == "ignored"
    assert cache.apply_event({"v": "1", "kind": "txn_end", "txid": "1", "txn": "committed"}) == "ignored"


def test_patch_reaches_a_day_loaded_meanwhile(fresh_ledger: str, make_cache: Make) -> None:
    """A write on a day that is not cached is ignored; the next read loads it with the write."""
    cache = make_cache(fresh_ledger)
    sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5) "
           "VALUES (90020, '2024-03-15', '1', '2', 1, NULL, NULL, NULL, NULL, NULL)")
    execute(fresh_ledger, sql)
    assert cache.apply_event(event(sql, "INSERT 0 1")) == "ignored"
    assert same(fresh_ledger, cache)


def test_compaction_folds_patches(warm: tuple[str, GLCache]) -> None:
    dsn, cache = warm
    for i in range(5):
        sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5)"
               f" VALUES ({91000 + i}, '2024-03-15', '1', '2', {i}.5, NULL, NULL, NULL, NULL, NULL)")
        execute(dsn, sql)
        assert cache.apply_event(event(sql, "INSERT 0 1")) == "patched"
    assert cache.compact(DAY)
    other = make_other_cache(cache)
    assert arrow_rows(other.get_day(DAY)) == pg_rows(dsn, DAY)
    assert other.stats["hits_redis"] == 1
    other.close()
    assert same(dsn, cache)


def test_patch_log_compacts_itself(fresh_ledger: str, make_cache: Make) -> None:
    cache = make_cache(fresh_ledger, compact_after=3)
    cache.get_day(DAY)
    cache.flush()
    for i in range(4):
        sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5)"
               f" VALUES ({92000 + i}, '2024-03-15', '1', '2', {i}, NULL, NULL, NULL, NULL, NULL)")
        execute(fresh_ledger, sql)
        assert cache.apply_event(event(sql, "INSERT 0 1")) == "patched"
    meta = cache.store.meta(DAY)
    assert meta is not None and meta["source"] == "compaction" and meta["applied"] == 3
    assert cache.stats["compactions"] == 1
    other = make_other_cache(cache)
    assert arrow_rows(other.get_day(DAY)) == pg_rows(fresh_ledger, DAY)  # base + the 4th patch
    other.close()


@pytest.mark.parametrize("write", ["truncate", "insert"])
def test_a_write_while_the_day_is_being_stored_is_seen(fresh_ledger: str, make_cache: Make,
                                                       write: str) -> None:
    """Between a load and the end of its background store to Redis, readers in the process get the loaded
    table; a write that lands in that window (invalidation or patch) must not be hidden by it."""
    cache = make_cache(fresh_ledger)
    store_base = cache._store_base
    release = threading.Event()

    def held_store(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)  # keeps the window open, whatever the machine's speed
        return store_base(*args, **kwargs)

    cache._store_base = held_store  # type: ignore[method-assign]
    try:
        assert same(fresh_ledger, cache)  # loaded; the store waits
        if write == "truncate":
            execute(fresh_ledger, "TRUNCATE gl_entries")
            assert cache.apply_event(event("TRUNCATE gl_entries", "TRUNCATE TABLE")) == "invalidated"
        else:
            sql = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5)"
                   " VALUES (93001, '2024-03-15', '1', '2', 5, NULL, NULL, NULL, NULL, NULL)")
            execute(fresh_ledger, sql)
            assert cache.apply_event(event(sql, "INSERT 0 1")) == "patched"  # the locked day takes patches
        assert same(fresh_ledger, cache)
    finally:
        release.set()
        cache.flush()
    assert same(fresh_ledger, cache)  # and after the store: the patch applied, or the stale base refused
