"""Analyzer workers on a real three-node Redis Cluster (loopback): the proxy writes three hash-tagged
shards, two `fasterdata analyze` processes consume them, and the business totals equal what SQL says.
A cluster with one unsharded stream is refused at start-up with a one-line hint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import RulesFile
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.analysis import group_done
from tests.kit.polling import wait_until
from tests.kit.processes import ROOT, StartProxy, WorkerProcess
from tests.kit.rediscluster import Cluster
from tests.kit.services import direct_dsn
from tests.kit.spikes import check_spikes_and_drops
from tests.kit.streams import entries
from tests.kit.workload import RULES, NoEvents, Workload, dump, measured

SHARDS = 3
pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")


def long_transactions(w: Workload, conn: psycopg.Connection, n: int) -> None:
    """Three long transactions, one of them rolled back; in each, an order placed after a savepoint is
    undone by ROLLBACK TO SAVEPOINT after it went out early (the marker's `undone` must keep it out)."""
    w.conn = conn
    for k in range(3):
        conn.execute("BEGIN")
        for _ in range(2):
            w.order(multi=False)
        conn.execute("SAVEPOINT sp")
        w.order(multi=False)
        conn.execute("ROLLBACK TO SAVEPOINT sp")
        w.order(multi=False)
        conn.execute("ROLLBACK" if (n + k) % 3 == 0 else "COMMIT")
    w.buffer.clear()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("rediscluster")) as cluster:
        yield cluster


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fasterdata", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "COLUMNS": "200", **env})


def test_two_workers_on_a_cluster_match_sql(start_proxy: StartProxy, redis_cluster: Cluster, scratch_db: str,
                                            tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    env = {"FASTERDATA_STREAM_SHARDS": str(SHARDS)}
    proxy = start_proxy("--redis", url, env={**env, "FASTERDATA_SPOOL_DIR": str(tmp_path / "a")})
    prefix = proxy.prefix
    # a second proxy on the same shards with max_held 3: long transactions go out early (txn=open, then a
    # txn_end marker) and are parked by the analyzers until their outcome is known
    early = start_proxy("--redis", url, "--prefix", prefix,
                        env={**env, "FASTERDATA_SPOOL_DIR": str(tmp_path / "b"), "FASTERDATA_MAX_HELD": "3"})
    rc = redis_cluster.client()
    ks = shard_keys(prefix, SHARDS)
    streams = [k.statements for k in ks]
    assert len({rc.get_node_from_key(s).port for s in streams}) > 1, "all shards on one node: proves nothing"
    rules_path = tmp_path / "rules.json"
    rules_path.write_text(json.dumps(RULES))
    workers = [WorkerProcess(tmp_path, prefix, rules_path, name, "--batch", "50", env=env, redis_url=url)
               for name in ("a", "b")]
    try:
        setup = psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name="shop")
        w = Workload(setup, NoEvents(), seed=11)  # type: ignore[arg-type]
        w.setup()
        setup.close()
        # A new connection (session, so maybe another shard) every 10 transactions; the shard is picked by
        # Python's salted hash, and with 24 sessions (and 4 more below) the odds that one of three shards gets
        # none are ~4e-5.
        for _ in range(24):
            with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name="shop") as conn:
                w.conn = conn
                w.run_many(10)
        for n in range(4):
            with psycopg.connect(early.dsn(scratch_db), autocommit=True, application_name="shop") as conn:
                long_transactions(w, conn, n)
        for p in (proxy, early):
            assert p.stop() == 0, p.log()  # flushes the sink: every event is in the cluster now
        total = sum(len(entries(rc, s)) for s in streams)  # statements (a bundled entry holds several)
        assert total >= w.statements and all(rc.xlen(s) for s in streams)
        wait_until(lambda: group_done(rc, streams), f"the workers to drain the shards\n{workers[0].log()}",
                   timeout=120)
        with psycopg.connect(direct_dsn(scratch_db), autocommit=True) as conn:
            w.conn = conn
            truth = w.truth()
        got = measured(rc, prefix, SHARDS)
        assert got == truth, f"\nredis: {dump(got)}\nsql:   {dump(truth)}"
        kinds = {f.get("txn") for s in streams for _, f in entries(rc, s)}
        assert {"committed", "rolled_back", "open"} <= kinds
        assert any(f.get("undone") for s in streams for _, f in entries(rc, s) if f.get("kind") == "txn_end")

        def beats() -> dict[str, int]:
            return {n: json.loads(v)["statements"] for n, v in rc.hgetall(f"{prefix}:workers").items()}

        # each statement committed by exactly one of the two workers (heartbeats come once a second)
        wait_until(lambda: sum(beats().values()) == total and beats(), "heartbeats to add up to every statement")

        frame = _cli("top", "--once", "--redis", url, "--prefix", prefix, env=env)
        assert frame.returncode == 0, frame.stderr
        calls = merged.stats_totals(rc, ks)["calls"]
        assert max(int(rc.hget(k.stats_totals, "calls") or 0) for k in ks) < calls  # really spread
        assert f"statements {calls:,}" in frame.stdout, frame.stdout
        lines = frame.stdout.splitlines()
        for labels, value in truth["sales"].items():  # sums over the shards, as SQL says
            assert any(labels in line and f"{value:,}" in line for line in lines), (labels, value, frame.stdout)
        customers = next(line for line in lines if " customers " in line)  # a union of the shards' sets
        assert customers.split()[-1] == f"{truth['customers']['-']:,}", customers
        for worker in workers:
            assert worker.stop() == 0, worker.log()  # SIGTERM: the last batch finishes, exit 0
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.stop(signal.SIGKILL)
        rc.close()


def test_anomalies_on_a_cluster(redis_cluster: Cluster) -> None:
    """The anomaly evaluator sums the shards' window counts and writes its alerts in one slot (MULTI/EXEC)."""
    url = f"redis://127.0.0.1:{redis_cluster.ports[2]}/0"
    prefix = f"fdtest{uuid.uuid4().hex[:8]}"
    rc = redis_cluster.client()

    def make(rules: RulesFile) -> Worker:
        settings = AnalyzerSettings(redis=url, prefix=prefix, metrics="", consumer="w1", block=0.05,
                                    stream_shards=SHARDS)
        worker = Worker(settings, rules)
        assert worker.streams.cluster
        worker.setup()
        return worker

    try:
        check_spikes_and_drops(rc, prefix, SHARDS, make)
    finally:
        rc.close()


def test_a_cluster_needs_sharded_streams(redis_cluster: Cluster) -> None:
    url = f"redis://127.0.0.1:{redis_cluster.ports[1]}/0"
    prefix = f"fdtest{uuid.uuid4().hex[:8]}"
    done = _cli("analyze", "--redis", url, "--prefix", prefix, "--metrics", "", env={"FASTERDATA_STREAM_SHARDS": "1"})
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "set stream_shards >= 2" in lines[0], done.stderr
    rc = redis_cluster.client()
    assert not rc.exists(stream_name(prefix))  # refused before touching anything
    rc.close()

