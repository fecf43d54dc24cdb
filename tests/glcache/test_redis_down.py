"""Redis unreachable or killed: reads fall back to PostgreSQL with a warning and never fail."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable

import pytest
import redis

from analyzers.glcache.cache import GLCache
from tests.conftest import free_port, wait_port
from tests.glcache.conftest import DAY, OTHER_DAY, arrow_rows, pg_rows

Make = Callable[..., GLCache]


def test_unreachable_url(ledger_db: str, make_cache: Make, caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(ledger_db, redis=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="fasterdata.glcache"):
        table = cache.get_day(OTHER_DAY)
    assert arrow_rows(table) == pg_rows(ledger_db, OTHER_DAY)
    assert "Redis unreachable" in caplog.text
    assert cache.stats["hits_postgres"] == 1
    assert cache.warm(OTHER_DAY)["cached"] is False
    assert cache.apply_event({"kind": "stmt", "sql": "SELECT 1", "txn": "autocommit"}) == "ignored"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_killed_mid_life(ledger_db: str, make_cache: Make, tmp_path) -> None:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        cache = make_cache(ledger_db, redis=f"redis://127.0.0.1:{port}/0", redis_timeout=0.5, redis_retry=0.2)
        warm = cache.get_day(DAY)
        cache.flush()
        assert cache.stats["loads"] == 1
        assert redis.Redis(port=port).exists(f"{cache.settings.prefix}:gl:gl_entries:{DAY}")
    finally:
        server.kill()
        server.wait()
    table = cache.get_day(DAY)  # memory cannot be validated without Redis: straight from PostgreSQL
    assert arrow_rows(table) == arrow_rows(warm) == pg_rows(ledger_db, DAY)
    assert cache.stats["hits_postgres"] >= 1
