"""Redis unreachable, killed or hung (also a Redis Cluster): reads fall back to PostgreSQL with a warning
and never fail."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import redis

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache.kit import DAY, OTHER_DAY, arrow_rows, pg_rows
from tests.kit.ports import free_port, wait_port
from tests.kit.rediscluster import Cluster

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
        assert redis.Redis(port=port).exists(f"{cache.settings.prefix}:gl:{{gl_entries}}:{DAY}")
    finally:
        server.kill()
        server.wait()
    table = cache.get_day(DAY)  # memory cannot be validated without Redis: straight from PostgreSQL
    assert arrow_rows(table) == arrow_rows(warm) == pg_rows(ledger_db, DAY)
    assert cache.stats["hits_postgres"] >= 1


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_a_redis_cluster_is_used_and_a_hung_node_costs_one_timeout(ledger_db: str, make_cache: Make, tmp_path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Pointed at a Redis Cluster node that does not serve the table's slot, the cache stores and reads its
    days on the cluster (it used to refuse clusters). When the node holding the table hangs (SIGSTOP:
    connections are accepted, nothing answers) one read pays about one timeout (no client-side retries),
    then the breaker sends reads straight to PostgreSQL without touching Redis."""
    cluster = Cluster(tmp_path / "cluster")
    hung = None
    try:
        owner = cluster.owner(cluster.slot("{gl_entries}"))  # every prefix's gl_entries keys are there
        node = next(i for i in range(3) if i != owner)
        url = f"redis://127.0.0.1:{cluster.ports[node]}/0"
        cache = make_cache(ledger_db, redis=url, redis_timeout=0.3, redis_retry=60)
        assert cache.warm(OTHER_DAY)["cached"] is True
        with cluster.node(owner) as r:
            assert r.exists(cache.store.key(OTHER_DAY))
        assert cache.get_day(OTHER_DAY) is not None and cache.stats["hits_memory"] == 1
        loaded = cache.stats["hits_postgres"]  # the warm's load
        hung = cluster.procs[owner]
        hung.send_signal(signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="fasterdata.glcache"):
            started = time.monotonic()
            table = cache.get_day(OTHER_DAY)  # the memory copy cannot be validated: PostgreSQL
            first = time.monotonic() - started
            started = time.monotonic()
            again = cache.get_day(OTHER_DAY)
            second = time.monotonic() - started
        assert arrow_rows(table) == arrow_rows(again) == pg_rows(ledger_db, OTHER_DAY)
        assert cache.stats["hits_postgres"] == loaded + 2
        assert "could not serve the cache" in caplog.text or "Redis unreachable" in caplog.text
        # the command's timeout and redis-py's topology refresh (the others answer it); with its default
        # of 10 retries this took seconds
        assert first < 1.5, first
        assert second < 0.25, second  # breaker open: no Redis round trip at all
    finally:
        if hung is not None and hung.poll() is None:
            hung.send_signal(signal.SIGCONT)
        cluster.destroy()
