"""Concurrent cold reads of one day cause a single load: threads of a process and separate processes."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache import spawned
from tests.glcache.kit import DAY, pg_rows
from tests.kit.services import REDIS_URL

Make = Callable[..., GLCache]


def _together(n: int, fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_ten_threads_one_cache_one_load(ledger_db: str, make_cache: Make) -> None:
    cache = make_cache(ledger_db)
    cache.info()
    tables = _together(10, lambda i: cache.get_day(DAY))
    assert cache.stats["loads"] == 1
    assert all(t.num_rows == len(pg_rows(ledger_db, DAY)) for t in tables)  # type: ignore[attr-defined]


def test_ten_caches_one_load(ledger_db: str, make_cache: Make) -> None:
    """Ten caches (separate memory tiers, as in separate workers) coalesce on the Redis lock."""
    caches = [make_cache(ledger_db) for _ in range(10)]
    for c in caches:
        c.info()
    tables = _together(10, lambda i: caches[i].get_day(DAY))
    assert sum(c.stats["loads"] for c in caches) == 1
    assert len({t.num_rows for t in tables}) == 1  # type: ignore[attr-defined]


def test_processes_one_load(ledger_db: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=spawned.cold_read, args=(ledger_db, REDIS_URL, prefix, DAY, start, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    try:
        start.set()
        results = [out.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert sum(r[0] for r in results) == 1, results
    assert {r[1] for r in results} == {len(pg_rows(ledger_db, DAY))}
