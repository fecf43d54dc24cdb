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
from tests.rediscluster import Cluster

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


def test_a_redis_cluster_node_is_refused_plainly(ledger_db: str, make_cache: Make, tmp_path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Pointed at a Redis Cluster node that does not serve the day's key, the cache does not fail on some
    days and not others: it says the cache needs a standalone Redis and reads from PostgreSQL."""
    cluster = Cluster(tmp_path / "cluster")
    try:
        prefix = f"fdtest-glc-{free_port()}"
        day_slot = cluster.slot(f"{prefix}:gl:gl_entries:{OTHER_DAY}")
        node = next(i for i in range(3) if cluster.owner(day_slot) != i)
        cache = make_cache(ledger_db, redis=f"redis://127.0.0.1:{cluster.ports[node]}/0", prefix=prefix)
        with caplog.at_level(logging.WARNING, logger="fasterdata.glcache"):
            table = cache.get_day(OTHER_DAY)
        assert arrow_rows(table) == pg_rows(ledger_db, OTHER_DAY)
        assert "is a Redis Cluster node" in caplog.text and "needs a standalone Redis" in caplog.text
        assert cache.stats["hits_postgres"] == 1
    finally:
        cluster.destroy()
