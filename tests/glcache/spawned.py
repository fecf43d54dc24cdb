"""Functions run in child processes by the GL cache tests (importable under the spawn start method)."""

from __future__ import annotations

from typing import Any


def cold_read(dsn: str, redis_url: str, prefix: str, day: str, start: Any, out: Any) -> None:
    """Wait for the start signal, read the day once, report (loads, rows, waited)."""
    from fasterdata.analyzers.glcache.cache import GLCache

    with GLCache(dsn=dsn, redis=redis_url, prefix=prefix) as cache:
        cache.info()
        start.wait(30)
        table = cache.get_day(day)
        out.put((cache.stats["loads"], table.num_rows, cache.stats["waited"]))
