"""The console on a three-node Redis Cluster with three statement shards: every view merges the shards, as
the read model does, and its numbers are what the shards hold together (and what SQL says)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import parse
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from tests.console.kit import APP, ConsoleProcess
from tests.kit.analysis import drain
from tests.kit.databases import scratch_database
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, stop_all
from tests.kit.rediscluster import Cluster
from tests.kit.services import direct_dsn
from tests.kit.streams import entries
from tests.kit.workload import RULES, NoEvents, Workload

SHARDS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("rediscluster")) as c:
        yield c


def api(console: ConsoleProcess, path: str) -> Any:
    with urllib.request.urlopen(console.url + path, timeout=30) as resp:
        return json.loads(resp.read())


def test_the_console_merges_shards_on_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    env = {"FASTERDATA_STREAM_SHARDS": str(SHARDS)}
    proxy = ProxyProcess(tmp_path, "--redis", url, env={**env, "FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    rc = cluster.client()
    ks = shard_keys(proxy.prefix, SHARDS)
    try:
        with scratch_database() as db:
            with psycopg.connect(proxy.dsn(db), autocommit=True, application_name=APP) as conn:
                w = Workload(conn, NoEvents(), seed=11)  # type: ignore[arg-type]
                w.setup()
            for _ in range(12):  # a session a connection, and a shard a session
                with psycopg.connect(proxy.dsn(db), autocommit=True, application_name=APP) as conn:
                    w.conn = conn
                    w.run_many(8)
            assert proxy.stop() == 0, proxy.log()  # flushes the sink: every event is in the cluster
            with psycopg.connect(direct_dsn(db), autocommit=True) as conn:
                w.conn = conn
                truth = w.truth()
        streams = [k.statements for k in ks]
        assert all(rc.xlen(s) for s in streams), "a shard got no session: proves nothing"
        assert sum(len(entries(rc, s)) for s in streams) >= w.statements
        settings = AnalyzerSettings(redis=url, prefix=proxy.prefix, metrics="", consumer="c1", block=0.05,
                                    stream_shards=SHARDS)
        worker = Worker(settings, parse(RULES))
        worker.setup()
        drain(worker)
        worker.close()
        console = ConsoleProcess(tmp_path, proxy.prefix, redis_url=url, env=env)
        try:
            rows = api(console, "/api/top?sort=calls&limit=10")["rows"]
            for row in rows:
                member = f"{row['fp']}|{row['db']}|{row['app']}"
                assert row["calls"] == merged.stats_q(rc, ks, member)["calls"]
            # the workload's statements come from many sessions, so from every shard (the setup's from one)
            spread = [r for r in rows if r["calls"] > max(int(rc.hget(k.stats_q(f"{r['fp']}|{r['db']}|{r['app']}"),
                                                                        "calls") or 0) for k in ks)]
            assert spread, rows
            lead = spread[0]
            sales = next(r for r in api(console, "/api/business")["rules"] if r["rule"] == "sales")
            assert Decimal(sales["total"]) == sum(truth["sales"].values())
            assert {v["key"]: Decimal(v["value"]) for v in sales["values"]} == truth["sales"]
            pipeline = api(console, "/api/pipeline")
            assert [s["stream"] for s in pipeline["streams"]] == streams
            assert sum(s["length"] for s in pipeline["streams"]) == sum(len(entries(rc, s)) for s in streams)
            ddl = wait_until(lambda: [a for a in api(console, "/api/alerts")["alerts"] if a["rule"] == "ddl"],
                             what="the ddl alerts")
            assert {a["id"] for a in ddl} <= {i for k in ks for i, _ in rc.xrange(k.alerts)}
            fp = api(console, f"/api/fingerprint?fp={lead['fp']}")
            assert fp["calls"] == lead["calls"] and fp["text"]
        finally:
            assert console.stop() == 0, console.log()
    finally:
        stop_all([proxy])  # the cluster, private to this module, goes with its directory
        rc.close()
