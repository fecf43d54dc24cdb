"""Statement streams on a real three-node Redis Cluster on loopback, steady and in flux.

The proxy is given one node's URL; the hash-tagged streams ``<prefix>:statements:{i}`` live in slots
owned by other nodes, so the sink must follow MOVED redirections to each stream's owner.  Then the
cluster changes under a pgbench run: a node owning a stream is SIGKILLed and restarted (its AOF,
fsynced on every write, keeps what it confirmed), or a stream's slot moves to another node
(TRYAGAIN while its keys are split, ASK while the slot is migrating, MOVED afterwards).  pgbench
must see no error, and once the proxy has settled every statement must be in the streams once.
Finally ``stream_shards = 1``: the stream keeps its plain name, even with braces in the prefix.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from fasterdata.analyzers.redisconn import clustered, connect
from fasterdata.proxy.events import COMMITTED
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.metrics import scrape, settle, value
from tests.kit.pgbench import TPCB_KINDS, parse_pgbench, tpcb_kind
from tests.kit.polling import wait_until
from tests.kit.ports import wait_port
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.rediscluster import Cluster
from tests.kit.services import PG_USER
from tests.kit.streams import Event, entries

SHARDS = 3
SESSIONS = 30
PER_SESSION = 5

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def durable_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Nodes that survive a restart with their data; the others keep taking writes while one is down."""
    cluster = Cluster(tmp_path / "cluster", persistent=True, args=("--cluster-require-full-coverage", "no"))
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_sharded_streams_on_redis_cluster(start_proxy: StartProxy, redis_cluster: Cluster, tmp_path: Path) -> None:
    app = f"fault-cluster-{uuid.uuid4().hex[:8]}"
    rc = redis_cluster.client()
    seed = redis_cluster.ports[0]
    proxy = start_proxy("--redis", f"redis://127.0.0.1:{seed}/0",
                        env={"FASTERDATA_STREAM_SHARDS": str(SHARDS), "FASTERDATA_SPOOL_DIR": str(tmp_path)})
    streams = [stream_name(proxy.prefix, i) for i in range(SHARDS)]
    owners = {rc.get_node_from_key(s).port for s in streams}
    assert owners - {seed}, "every stream is on the seed node: the test would prove nothing"
    for n in range(SESSIONS):
        with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10) as conn:
            for i in range(PER_SESSION):
                conn.execute(f"select {n} * 100 + {i} as fault_cluster")

    def captured() -> list[dict[str, str]]:
        return [f for s in streams for _id, f in entries(rc, s) if f.get("app") == app and f.get("kind") == "stmt"]

    wait_until(lambda: len(captured()) >= SESSIONS * PER_SESSION, "every statement to reach the cluster", timeout=60)
    time.sleep(0.2)  # nothing more should arrive (doubles would show here); a pause, not a measurement
    events = captured()
    assert sorted(e["sql"] for e in events) == sorted(
        f"select {n} * 100 + {i} as fault_cluster" for n in range(SESSIONS) for i in range(PER_SESSION))
    assert all(rc.xlen(s) > 0 for s in streams)  # 30 sessions spread over all three shards
    for sid in {e["sid"] for e in events}:  # a session stays on one stream
        assert sum(1 for s in streams if any(f.get("sid") == sid for _id, f in entries(rc, s))) == 1
    rc.close()


# -- the cluster changes under pgbench ------------------------------------------------------------

TXNS = 1500
RATE = 100  # transactions per second: pgbench runs ~15 s however fast the machine, long enough to disturb it


def _pgbench(proxy: ProxyProcess, dbname: str, app: str) -> subprocess.Popen:
    """pgbench through the proxy, one connection (so one session, routed to one stream) per transaction."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(proxy.port), "PGUSER": PG_USER,
           "PGDATABASE": dbname, "PGAPPNAME": app}
    env.pop("PGPASSWORD", None)
    return subprocess.Popen(["pgbench", "-C", "-c", "4", "-j", "2", "-t", str(TXNS // 4), "-R", str(RATE)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(bench: subprocess.Popen) -> int:
    """Wait for pgbench; it must report every transaction done and none failed.  Returns that count."""
    out, _ = bench.communicate(timeout=300)
    result = parse_pgbench(out)
    assert bench.returncode == 0, out
    assert (result.processed, result.failed) == (TXNS, 0), out
    return result.processed


def _assert_each_statement_once(events: list[Event], app: str, processed: int) -> None:
    """The streams hold exactly one event per statement pgbench ran: none lost, none doubled."""
    mine = [ev for ev in events if ev.get("app") == app and ev.get("kind") == "stmt"]
    script = [ev for ev in mine if tpcb_kind(ev["sql"])]
    setup = [ev for ev in mine if not tpcb_kind(ev["sql"])]
    assert Counter(tpcb_kind(ev["sql"]) for ev in script) == {k: processed for k in TPCB_KINDS}
    assert {ev["txn"] for ev in script} == {COMMITTED}
    assert max(Counter((ev["sid"], ev["txid"], tpcb_kind(ev["sql"])) for ev in script).values()) == 1
    for sid in {ev["sid"] for ev in script}:  # one transaction per session (-C), in the order it ran
        assert [tpcb_kind(ev["sql"]) for ev in script if ev["sid"] == sid] == list(TPCB_KINDS), sid
    assert Counter(ev["sql"].split()[0] for ev in setup) == {"select": 2, "vacuum": 2, "truncate": 1}


def _all_events(cluster: Cluster, streams: list[str]) -> list[Event]:
    rc = cluster.client()
    try:
        return [fields for s in streams for _id, fields in entries(rc, s)]
    finally:
        rc.close()


def _xlen(cluster: Cluster, stream: str, node: int, asking: bool = False) -> int:
    """XLEN on one node; ``asking`` for a node importing the slot (it would answer MOVED otherwise)."""
    with cluster.node(node) as r:
        if not asking:
            return r.xlen(stream)
        pipe = r.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.xlen(stream)
        return pipe.execute()[1]


def _metric(proxy: ProxyProcess, name: str) -> float:
    return value(scrape(proxy)[1], name)


def _start(start_proxy: StartProxy, cluster: Cluster, seed: int, tmp_path: Path) -> tuple[ProxyProcess, list[str]]:
    proxy = start_proxy("--redis", f"redis://127.0.0.1:{cluster.ports[seed]}/0",
                        env={"FASTERDATA_STREAM_SHARDS": str(SHARDS), "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    wait_port(proxy.metrics_port)
    wait_until(lambda: _metric(proxy, "fasterdata_sink_redis_up") == 1, "the sink to connect")
    return proxy, [stream_name(proxy.prefix, i) for i in range(SHARDS)]


def _grows(check: Callable[[], int], by: int) -> Callable[[], bool]:
    start = check()
    return lambda: check() >= start + by


def test_node_restarted_during_pgbench(start_proxy: StartProxy, durable_cluster: Cluster, bench_db: str,
                                       tmp_path: Path) -> None:
    """A node owning a stream is SIGKILLed mid-run and started again on its port and directory."""
    cluster = durable_cluster
    app = f"fault-restart-{uuid.uuid4().hex[:8]}"
    probe = f"probe:statements:{{{0}}}"  # stream 0's slot (the hash tag is all that counts)
    victim = cluster.owner(cluster.slot(probe))
    seed = next(i for i in range(3) if i != victim)  # the victim's lane goes seed → MOVED → victim, in vain
    proxy, streams = _start(start_proxy, cluster, seed, tmp_path)
    owner = {s: cluster.owner(cluster.slot(s)) for s in streams}
    others = [s for s in streams if owner[s] != victim]
    assert others, "every stream on the victim: nothing would show that the others keep flowing"
    bench = _pgbench(proxy, bench_db, app)
    try:
        wait_until(lambda: all(_xlen(cluster, s, owner[s]) >= 50 for s in streams) or bench.poll() is not None,
                   "statements on every stream")
        assert bench.poll() is None, "pgbench finished before the node was killed"
        cluster.stop(victim)  # SIGKILL, whatever it was doing
        wait_until(lambda: _metric(proxy, "fasterdata_sink_redis_up") == 0, "the sink to notice")
        wait_until(_grows(lambda: _metric(proxy, "fasterdata_sink_spooled_total"), 100), "events to be spooled")
        for s in others:  # the other nodes keep taking this proxy's writes
            wait_until(_grows(lambda s=s: _xlen(cluster, s, owner[s]), 100), f"{s} to keep growing")
        time.sleep(3)  # a few seconds of outage (not a measurement)
        assert bench.poll() is None, "pgbench finished during the outage: the restart was not under load"
        cluster.start(victim)
        cluster.wait_ok()
        processed = _finish(bench)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    samples = settle(proxy, timeout=120)
    assert value(samples, "fasterdata_sink_replayed_total") > 0
    assert value(samples, "fasterdata_sink_dropped_total") == 0
    _assert_each_statement_once(_all_events(cluster, streams), app, processed)


def test_slot_migrated_during_pgbench(start_proxy: StartProxy, durable_cluster: Cluster, bench_db: str,
                                      tmp_path: Path) -> None:
    """A stream's slot moves to another node mid-run: IMPORTING/MIGRATING, the stream key alone (its
    marker still on the source: TRYAGAIN), the rest (ASK), SETSLOT NODE (MOVED)."""
    cluster = durable_cluster
    app = f"fault-migrate-{uuid.uuid4().hex[:8]}"
    proxy, streams = _start(start_proxy, cluster, 0, tmp_path)
    stream = streams[1]
    slot = cluster.slot(stream)
    source = cluster.owner(slot)
    target = (source + 1) % 3
    with cluster.node(target) as r:
        r.config_resetstat()

    def asking() -> int:
        with cluster.node(target) as r:
            return int(r.info("commandstats").get("cmdstat_asking", {}).get("calls", 0))

    def on(node: int, asking: bool = False) -> Callable[[], int]:
        return lambda: _xlen(cluster, stream, node, asking)

    bench = _pgbench(proxy, bench_db, app)
    try:
        wait_until(lambda: on(source)() >= 50 or bench.poll() is not None, "statements on the stream that moves")
        cluster.migrate_begin(slot, source, target)
        wait_until(_grows(on(source), 20), "writes to the source while the slot is MIGRATING")
        errors = _grows(lambda: _metric(proxy, "fasterdata_sink_send_errors_total"), 1)
        assert cluster.migrate_keys(slot, source, target, [stream]) == 1
        wait_until(errors, "the sink to meet the split keys (TRYAGAIN)")
        assert cluster.migrate_keys(slot, source, target) >= 1  # the sink's marker
        wait_until(lambda: asking() >= 20, "batches sent to the target after ASK")  # before the test's own ASKING
        wait_until(_grows(on(target, asking=True), 20), "writes to the target while the slot is still migrating")
        cluster.migrate_end(slot, target)
        wait_until(_grows(on(target), 20), "writes to the target after the move")
        assert bench.poll() is None, "pgbench finished during the move: it was not under load"
        processed = _finish(bench)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    samples = settle(proxy, timeout=120)
    assert value(samples, "fasterdata_sink_dropped_total") == 0
    with cluster.node(source) as r:
        assert r.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    _assert_each_statement_once(_all_events(cluster, streams), app, processed)


def test_single_stream_on_redis_cluster(start_proxy: StartProxy, redis_cluster: Cluster, tmp_path: Path) -> None:
    """``stream_shards = 1``: the stream is ``<prefix>:statements``; a prefix with a brace would have put the
    marker in another slot (CROSSSLOT) before the marker's name was chosen by slot."""
    app = f"fault-single-{uuid.uuid4().hex[:8]}"
    prefix = f"fdtest}}{uuid.uuid4().hex[:8]}"
    stream = stream_name(prefix)
    assert redis_cluster.slot(stream) != redis_cluster.slot(f"{prefix}:sink:{{{stream}}}:x")  # the old name
    seed = next(i for i in range(3) if redis_cluster.owner(redis_cluster.slot(stream)) != i)
    proxy = start_proxy("--redis", f"redis://127.0.0.1:{redis_cluster.ports[seed]}/0", "--prefix", prefix,
                        env={"FASTERDATA_STREAM_SHARDS": "1", "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    _ten_sessions_captured_once(proxy, redis_cluster, [stream], app, "fault_single")


def _ten_sessions_captured_once(proxy: ProxyProcess, cluster: Cluster, streams: list[str], app: str,
                                label: str) -> list[Event]:
    """Ten sessions of PER_SESSION statements through `proxy`: once it has settled, each statement is in
    `streams` exactly once and nothing was dropped. The events."""
    for n in range(10):
        with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10) as conn:
            for i in range(PER_SESSION):
                conn.execute(f"select {n} * 100 + {i} as {label}")
    settle(proxy)
    events = [ev for ev in _all_events(cluster, streams) if ev.get("app") == app and ev.get("kind") == "stmt"]
    assert sorted(ev["sql"] for ev in events) == sorted(
        f"select {n} * 100 + {i} as {label}" for n in range(10) for i in range(PER_SESSION))
    assert _metric(proxy, "fasterdata_sink_dropped_total") == 0
    return events


def test_seed_node_down_at_start(start_proxy: StartProxy, durable_cluster: Cluster, tmp_path: Path) -> None:
    """The first node of a seed list is down when the proxy and an analyzer client start: the others are
    asked who serves each stream (it used to take one URL, and its lanes spooled until that node returned)."""
    owners = {durable_cluster.owner(durable_cluster.slot(f"x:{{{i}}}")) for i in range(SHARDS)}
    down = next(i for i in range(3) if i not in owners)  # serves no stream: nothing has to wait for it
    durable_cluster.stop(down)
    others = [p for i, p in enumerate(durable_cluster.ports) if i != down]
    url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in [durable_cluster.ports[down], *others]) + "/0"
    app = f"fault-seeds-{uuid.uuid4().hex[:8]}"
    proxy = start_proxy("--redis", url, env={"FASTERDATA_STREAM_SHARDS": str(SHARDS),
                                              "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    streams = [stream_name(proxy.prefix, i) for i in range(SHARDS)]
    events = _ten_sessions_captured_once(proxy, durable_cluster, streams, app, "fault_seeds")

    client = connect(url, decode_responses=True)  # what `analyze`, `top` and `gl follow` use
    try:
        assert clustered(client)
        assert sum(len(entries(client, s)) for s in streams) >= len(events)
    finally:
        client.close()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three masters with one replica each, append-only; the other shards keep taking writes while one is down."""
    cluster = Cluster(tmp_path / "cluster", persistent=True, replicas=1,
                      args=("--cluster-require-full-coverage", "no"))
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_failover_to_a_replica_loses_no_confirmed_statement(start_proxy: StartProxy, replicated_cluster: Cluster,
                                                             tmp_path: Path) -> None:
    """`redis_wait_replicas: 1`: the stream's master takes writes its replica never gets (the replica is
    stopped), then dies and the replica takes over. A batch only the old master held was never confirmed, so
    it waits in the spool and reaches the new master; with the primary's reply alone those statements are
    gone (redis-server's asynchronous replication)."""
    c = replicated_cluster
    app = f"fault-wait-{uuid.uuid4().hex[:8]}"
    url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in c.ports) + "/0"
    proxy = start_proxy("--redis", url, env={
        "FASTERDATA_STREAM_SHARDS": "1", "FASTERDATA_REDIS_WAIT_REPLICAS": "1", "FASTERDATA_REDIS_WAIT_TIMEOUT": "0.5",
        "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    stream = stream_name(proxy.prefix)
    master = c.owner(c.slot(stream))
    replica = c.replica_of(master)

    def run(label: str, n: int) -> list[str]:
        sqls = [f"select {i} as {label}" for i in range(n)]
        with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10) as conn:
            for sql in sqls:
                conn.execute(sql)
        return sqls

    expected = run("before_pause", 20)
    settle(proxy)
    c.procs[replica].send_signal(signal.SIGSTOP)  # replication stops; the master still answers
    try:
        expected += run("during_pause", 50)
        wait_until(lambda: _metric(proxy, "fasterdata_sink_redis_up") == 0 or _on_master_only(c, master, stream),
                   "the sink to try the paused replica")
        c.stop(master)
    finally:
        c.procs[replica].send_signal(signal.SIGCONT)
    with c.node(replica) as r:
        r.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    wait_until(lambda: c.node(replica).info("replication")["role"] == "master", "the replica to take over")
    # The old master restarts with its nodes.conf, as the master of its slots at its old configEpoch; the
    # cluster's UPDATE message (the new master's claim has the higher epoch) makes it the new master's
    # replica a moment after it answers PING, and it syncs before a WAIT can count it.
    c.start(master)
    c.wait_replica(master, replica)
    settle(proxy, timeout=90)
    with c.node(replica) as r:
        got = [fields["sql"] for _id, fields in entries(r, stream) if fields.get("app") == app]
    assert sorted(got) == sorted(expected)  # each once: none lost with the old master, none doubled by the resend
    assert _metric(proxy, "fasterdata_sink_dropped_total") == 0


def _on_master_only(c: Cluster, master: int, stream: str) -> bool:
    """Statements of the paused phase reached the master (what a sink that does not wait confirms)."""
    with c.node(master) as r:
        return any("during_pause" in f.get("sql", "") for _i, f in entries(r, stream))
