"""The ledger cache on a real three-primary Redis Cluster (loopback, ports picked free by the harness).

The client is pointed at a node that does not serve the table's slot, so every command is routed by
RedisCluster rather than answered by luck; one test lists a dead seed first. Covered: warm and read back,
invalidate, a raced base write, clear, the load lock's scripts, and patches appended by the follower
from statements the proxy captured onto sharded streams.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from fasterdata.analyzers.glcache import ipc
from fasterdata.analyzers.glcache.cache import GLCache
from fasterdata.analyzers.glcache.follow import Follower, start_thread
from fasterdata.analyzers.redisconn import clustered
from tests.glcache.kit import DAY, OTHER_DAY, THIRD_DAY, arrow_rows, pg_rows
from tests.kit.polling import wait_until
from tests.kit.ports import free_port
from tests.kit.processes import StartProxy
from tests.kit.rediscluster import Cluster

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")

Make = Callable[..., GLCache]
SHARDS = 3
# A column list: the proxy hides the values of an INSERT without one, and a patch from values needs them.
INSERT = ("INSERT INTO gl_entries (id, trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3, t_4, t_5) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("glcluster")) as c:
        yield c


def _slot_owner(cluster: Cluster) -> int:
    """The node serving the table's hash tag (every prefix's gl_entries keys land there)."""
    return cluster.owner(cluster.slot("{gl_entries}"))


@pytest.fixture(scope="module")
def url(cluster: Cluster) -> str:
    """A node that does not serve the table's slot: nothing works unless commands are routed."""
    owner = _slot_owner(cluster)
    return f"redis://127.0.0.1:{next(p for i, p in enumerate(cluster.ports) if i != owner)}/0"


def _keys_on(cluster: Cluster, i: int, pattern: str) -> list[str]:
    with cluster.node(i) as r:
        return list(r.scan_iter(match=pattern, count=1000))


def test_warm_and_read_back(cluster: Cluster, url: str, ledger_db: str, make_cache: Make,
                            caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(ledger_db, redis=url)
    store = cache.store
    slots = {cluster.slot(k) for k in (store.key(DAY), store.lock_key(DAY), store.key(OTHER_DAY), store.gen_key,
                                       store.days_key)}
    assert len(slots) == 1, "the table's keys must share one slot"
    with caplog.at_level(logging.WARNING, logger="fasterdata.glcache"):
        report = cache.warm(DAY)
    assert report["cached"] is True, caplog.text
    assert "unreachable" not in caplog.text and "standalone" not in caplog.text
    assert clustered(store.client)
    owner = _slot_owner(cluster)
    with cluster.node(owner) as r:
        assert r.hexists(store.key(DAY), "epoch") and r.sismember(store.days_key, DAY)
    assert not any(_keys_on(cluster, i, f"{store.prefix}:*") for i in range(3) if i != owner)

    other = make_cache(ledger_db, redis=url)  # another process: empty memory, same cluster
    table = other.get_day(DAY)
    assert other.stats["hits_redis"] == 1 and other.stats["loads"] == 0
    assert arrow_rows(table) == pg_rows(ledger_db, DAY)
    assert other.describe_cache()["redis"][DAY]["rows"] == table.num_rows


def test_invalidate_race_clear_and_locks(cluster: Cluster, url: str, ledger_db: str, make_cache: Make) -> None:
    cache = make_cache(ledger_db, redis=url)
    store = cache.store
    for day in (DAY, OTHER_DAY, THIRD_DAY):
        assert cache.warm(day)["cached"] is True
    assert store.days() == sorted([DAY, OTHER_DAY, THIRD_DAY])

    gen = store.generation()
    assert cache.invalidate(OTHER_DAY) == [OTHER_DAY]  # MULTI: INCR gen, DEL day, SREM days
    assert store.generation() == gen + 1
    assert store.read(OTHER_DAY) is None and store.days() == sorted([DAY, THIRD_DAY])
    assert arrow_rows(cache.get_day(OTHER_DAY)) == pg_rows(ledger_db, OTHER_DAY)  # reloaded
    cache.flush()

    # a base built before an invalidation is refused (WATCH on gen, MULTI/EXEC on the slot's node)
    snap = store.read(DAY)
    assert snap is not None
    stale_gen = store.generation()
    store.invalidate([])
    assert store.write_base(DAY, snap.chunks, dict(snap.meta), stale_gen) is None
    assert store.head(DAY)[0] == snap.epoch
    epoch = store.write_base(DAY, snap.chunks, dict(snap.meta), store.generation())
    assert epoch is not None and store.head(DAY)[0] == epoch
    assert arrow_rows(ipc.decode(store.read(DAY).chunks)) == arrow_rows(ipc.decode(snap.chunks))

    # the lock and its scripts (SET NX, release and renew in Lua, append counting a locked day as cached)
    day = "2024-01-01"
    assert store.append_patch(day, b"not cached") == 0
    assert store.try_lock(day, "me", 5) and not store.try_lock(day, "you", 5) and store.locked(day)
    assert store.append_patches({day: b"p1", DAY: b"p2"}) == {day: 1, DAY: 1}
    renewer = store.renewer(day, "me", 0.6)
    time.sleep(0.9)  # past the first lifetime: only renewals keep it
    assert store.locked(day)
    renewer.stop()
    store.unlock(day, "you")
    assert store.locked(day)
    store.unlock(day, "me")
    assert not store.locked(day)

    # clear takes this table's keys on every node and nothing else
    neighbour = f"{store.prefix}:gl:{{other_table}}:{DAY}"
    rc = cluster.client()
    try:
        rc.set(neighbour, "stays")
        assert store.clear() >= 4
        assert not any(_keys_on(cluster, i, f"{store.base}:*") for i in range(3))
        assert rc.get(neighbour) == "stays"
    finally:
        rc.delete(neighbour)
        rc.close()
    assert store.days() == [] and store.read(DAY) is None


def test_follower_patches_from_proxy_statements(cluster: Cluster, url: str, fresh_ledger: str,
                                                start_proxy: StartProxy, tmp_path: Path, make_cache: Make) -> None:
    """Statements captured by the proxy onto three shards patch the cached day: nothing reloads."""
    env = {"FASTERDATA_STREAM_SHARDS": str(SHARDS), "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")}
    proxy = start_proxy("--redis", url, env=env)
    dbname = fresh_ledger.split("dbname=")[1]
    cache = make_cache(fresh_ledger, redis=url, prefix=proxy.prefix, stream_shards=SHARDS)
    follower = Follower(cache)
    assert clustered(follower.client)
    thread, stop = start_thread(follower)
    try:
        assert cache.warm(DAY)["cached"] is True
        with cluster.client() as rc:  # as after a restart: no node knows the script (NOSCRIPT, reloaded)
            assert rc.script_flush()
        with psycopg.connect(proxy.dsn(dbname), autocommit=True) as conn:
            conn.execute(INSERT, (80001, DAY, "1000", "2000", Decimal("42.42"), "e2e", None, "", "x", "y"))
        with psycopg.connect(proxy.dsn(dbname)) as conn:
            conn.execute(INSERT, (80002, DAY, "1000", "2000", Decimal("1.00"), None, None, None, None, None))
            conn.rollback()
            conn.execute("UPDATE gl_entries SET amount = 7.77 WHERE id = %s", (101,))
            conn.execute("DELETE FROM gl_entries WHERE id = %s", (102,))
            conn.commit()
        expected = pg_rows(fresh_ledger, DAY)
        wait_until(lambda: arrow_rows(cache.get_day(DAY)) == expected,
                   f"the writes to reach the cache (the follower handled {follower.processed} events)", 15)
        assert cache.stats["loads"] == 1 and cache.stats["events_patched"] >= 2  # patched, not reloaded
        assert cache.store.head(DAY)[1] >= 2  # the patch log is in the cluster

        other = make_cache(fresh_ledger, redis=url, prefix=proxy.prefix)  # base + patches from Redis
        assert arrow_rows(other.get_day(DAY)) == expected
        assert other.stats["hits_redis"] == 1 and other.stats["loads"] == 0
        assert cache.compact(DAY)  # folds the patches into a new base (lock, WATCH/MULTI)
        last = make_cache(fresh_ledger, redis=url, prefix=proxy.prefix)
        assert arrow_rows(last.get_day(DAY)) == expected and last.stats["loads"] == 0
    finally:
        stop.set()
        thread.join(10)
        follower.close()


def test_a_dead_seed_node_is_skipped(cluster: Cluster, ledger_db: str, make_cache: Make,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """The URL's first seed does not answer: the next one is asked, and every seed starts the client."""
    dead = free_port()
    seeds = ",".join(f"127.0.0.1:{p}" for p in [dead, *cluster.ports])
    url = f"redis://{seeds}/0"
    with caplog.at_level(logging.WARNING):
        cache = make_cache(ledger_db, redis=url, redis_timeout=1.0)
        assert cache.warm(OTHER_DAY)["cached"] is True
    assert f"127.0.0.1:{dead}" in caplog.text and "trying the next host" in caplog.text
    assert "glcache" not in caplog.text  # no fallback to PostgreSQL
    other = make_cache(ledger_db, redis=url, redis_timeout=1.0)
    assert arrow_rows(other.get_day(OTHER_DAY)) == pg_rows(ledger_db, OTHER_DAY)
    assert other.stats["hits_redis"] == 1 and other.stats["loads"] == 0

