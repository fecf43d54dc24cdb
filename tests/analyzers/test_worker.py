"""Worker mechanics: the group, acknowledgement, lag, Prometheus /metrics and /healthz, the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fasterdata import cli
from fasterdata.analyzers.stats import BatchStats, StatsCollector
from fasterdata.proxy.streamkeys import stream_name
from tests.analyzers.kit import samples
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events
from tests.kit.metrics import http_get
from tests.kit.polling import wait_until
from tests.kit.ports import port_open


def test_group_and_stream_are_created_if_absent(r: redis.Redis, prefix: str) -> None:
    make_worker(prefix)
    groups = r.xinfo_groups(stream_name(prefix))
    assert [g["name"] for g in groups] == ["analyzers"]
    make_worker(prefix, consumer="w2")  # a second worker finds the group there: fine


def test_entries_are_acknowledged_after_processing(r: redis.Redis, prefix: str) -> None:
    events = Events(r, prefix, entry="packed")
    with events:
        for i in range(1200):
            events.stmt("SELECT abalance FROM pgbench_accounts WHERE aid = $1", [i], tag="SELECT", rows=1)
    w = make_worker(prefix, batch=500)
    assert drain(w) == 1200 and w.counters.statements == 1200
    assert 3 <= w.counters.batches <= 30  # about 500 statements a batch once the first ones showed 1 an entry
    assert r.xpending(stream_name(prefix), "analyzers")["pending"] == 0
    q = r.hgetall(f"{prefix}:stats:q:" + r.zrevrange(f"{prefix}:stats:top:calls", 0, 0)[0])
    assert q["calls"] == "1200" and q["rows"] == "1200" and int(q["total_us"]) == 1200 * 150


def test_bundled_entries_are_read_about_batch_statements_at_a_time(r: redis.Redis, prefix: str,
                                                                    events: Events) -> None:
    """A bundled entry holds up to 100 statements: the worker reads fewer entries at a time, so a batch stays
    near `batch` statements instead of 100 times that."""
    with events:
        for i in range(20_000):
            events.stmt("SELECT abalance FROM pgbench_accounts WHERE aid = $1", [i], tag="SELECT", rows=1)
    assert r.xlen(stream_name(prefix)) == 200
    w = make_worker(prefix, batch=500)
    assert drain(w) == 200 and w.counters.statements == 20_000 and w.counters.entries == 200
    assert w.counters.batches >= 20 and w.count == 5
    assert r.xpending(stream_name(prefix), "analyzers")["pending"] == 0
    q = r.hgetall(f"{prefix}:stats:q:" + r.zrevrange(f"{prefix}:stats:top:calls", 0, 0)[0])
    assert q["calls"] == "20000" and q["rows"] == "20000"


def test_a_damaged_bundle_is_counted_and_skipped(r: redis.Redis, prefix: str, events: Events) -> None:
    events.stmt("SELECT 1", tag="SELECT", rows=1)
    r.xadd(stream_name(prefix), {"events": "3,2\x00v\x001"})  # field counts that do not match
    events.stmt("SELECT 2", tag="SELECT", rows=1)
    w = make_worker(prefix)
    assert drain(w) == 3 and w.counters.statements == 2 and w.counters.bad == 1


def test_flat_and_packed_entries_are_read_alike(r: redis.Redis, prefix: str) -> None:
    """A stream may hold both (a proxy's stream_entry changed, proxies of two releases): same events."""
    for entry in ("flat", "packed", "bundled"):
        Events(r, prefix, entry=entry).stmt("SELECT abalance FROM pgbench_accounts WHERE aid = $1", [7],
                                            tag="SELECT", rows=3)
    assert [list(fields) for _id, fields in r.xrange(stream_name(prefix))][1:] == [["event"], ["events"]]
    w = make_worker(prefix)
    assert drain(w) == 3
    assert (w.counters.bad, w.counters.failed) == (0, 0)
    q = r.hgetall(f"{prefix}:stats:q:" + r.zrevrange(f"{prefix}:stats:top:calls", 0, 0)[0])
    assert q["calls"] == "3" and q["rows"] == "9"


def test_lag_counts_entries_and_the_age_of_the_oldest(r: redis.Redis, prefix: str) -> None:
    stream = stream_name(prefix)
    w = make_worker(prefix, claim_idle=0.001)
    old_ms = int(time.time() * 1000) - 120_000  # entries the proxy wrote two minutes ago
    for i in range(3):
        r.xadd(stream, {"v": "1", "kind": "stmt", "ts": str(old_ms * 1000), "sql": "SELECT 1", "proto": "simple"},
               id=f"{old_ms}-{i}")
    w.upkeep.measure_lag()
    assert w.counters.lag_entries == 3
    assert w.counters.lag_seconds >= 120
    r.xreadgroup("analyzers", "ghost", {stream: ">"}, count=2)  # delivered to a worker that then died
    w.upkeep.measure_lag()
    assert w.counters.pending == 2 and w.counters.lag_entries == 1 and w.counters.lag_seconds >= 120
    time.sleep(0.01)  # > claim_idle
    drain(w)
    w.upkeep.measure_lag()
    assert (w.counters.pending, w.counters.lag_entries, w.counters.lag_seconds) == (0, 0, 0.0)


def test_statements_trimmed_before_analysis_are_counted_and_said(r: redis.Redis, prefix: str, packed_events: Events,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The stream cap can take entries delivered but not yet analysed (a dead worker's, or this one's
    before a restart), and entries never delivered (the proxy counts those in <stream>:trimmed): neither
    may vanish without a count and a warning."""
    stream = stream_name(prefix)
    with packed_events:
        for i in range(6):
            packed_events.stmt("SELECT $1", [i])
    w = make_worker(prefix, claim_idle=0.001)
    restarted = make_worker(prefix, consumer="restarted")
    r.xreadgroup("analyzers", "ghost", {stream: ">"}, count=4)  # delivered to a worker that then died
    r.xreadgroup("analyzers", "restarted", {stream: ">"}, count=2)  # read before its restart
    r.xtrim(stream, maxlen=0)
    restarted._own_pending()
    assert restarted.counters.trimmed_pending == 2 and restarted.counters.entries == 2  # acknowledged
    time.sleep(0.01)  # > claim_idle
    assert w.claim() == 0
    assert w.counters.trimmed_pending == 4
    assert r.xpending(stream, "analyzers")["pending"] == 0
    r.hset(f"{stream}:trimmed", mapping={"analyzers": 7, "glcache": 3})  # as the proxy's trims count them
    w.upkeep.measure_lag()
    assert w.counters.trimmed_unread == 7
    said = [rec.getMessage() for rec in caplog.records if "trimmed" in rec.getMessage()]
    assert any(m.startswith("4 stream entries delivered to group analyzers were trimmed") for m in said), said
    assert any(m.startswith("2 stream entries delivered") for m in said), said
    assert any(m.startswith("7 statements were trimmed from the stream (stream_maxlen) before group analyzers")
               for m in said), said


def test_metrics_health_and_sigterm(r: redis.Redis, prefix: str, events: Events, start_worker) -> None:
    w = start_worker("m1", "--batch", "50")
    with events:
        for i in range(40):
            events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)",
                        [i, i, "eu", "2.50"], tag="INSERT", rows=1)
        events.stmt("SELECT * FROM orders WHERE id = 7", tag="SELECT", rows=1)
        events.stmt("SELECT nope FROM", tag="SELECT", err="42601")

    def done() -> dict | None:
        try:
            _status, text = http_get(w.metrics_port)
        except OSError:
            return None
        s = samples(text)
        # The day's business value is read from Redis, so it shows once the batch's commit has landed, which
        # may be a scrape after the statements were counted.
        analysed = s.get(("fasterdata_analyzer_statements_total", ())) == 42
        return s if analysed and s.get(("fasterdata_business_sales", (("region", "eu"),))) == 100.0 else None

    s = wait_until(done, what=f"metrics to show 42 statements and the day's sales\n{w.log()}")
    assert s[("fasterdata_business_sales", (("region", "eu"),))] == 100.0
    assert s[("fasterdata_business_sales_processed_total", (("region", "eu"),))] == 100.0
    assert s[("fasterdata_analyzer_unparsed_total", ())] == 1
    assert ("fasterdata_analyzer_lag_seconds", ()) in s and ("fasterdata_analyzer_pending", ()) in s
    calls = {k[1]: v for k, v in s.items() if k[0] == "fasterdata_statements_total"}
    assert sum(calls.values()) == 42
    errors = [k for k in s if k[0] == "fasterdata_statement_errors_total"]
    assert any(("sqlstate", "42601") in k[1] for k in errors)
    assert any(k[0] == "fasterdata_statement_duration_seconds_bucket" for k in s)
    assert http_get(w.metrics_port, "/healthz") == (200, "ok\n")
    assert http_get(w.metrics_port, "/readyz")[0] == 200
    assert w.stop(signal.SIGTERM) == 0, w.log()

    again = start_worker("m1")  # restarted: the day's values are Redis's, not this process's
    s = wait_until(lambda: samples(http_get(again.metrics_port)[1]) if port_open(again.metrics_port) else None,
                   what=f"metrics of the restarted worker\n{again.log()}")
    assert s[("fasterdata_business_sales", (("region", "eu"),))] == 100.0
    assert not any(name.endswith("_processed_total") and name.startswith("fasterdata_business_") and value
                   for (name, _), value in s.items())
    assert again.stop(signal.SIGTERM) == 0, again.log()


def test_prometheus_fingerprints_are_capped_to_top_k() -> None:
    coll = StatsCollector(top_k=2)
    batch = BatchStats()
    for i, fp in enumerate(["a", "b", "c", "d", "e"]):
        for _ in range(i + 1):
            batch.add(fp, "db", "app", dur_us=1000 * (i + 1), rows=1, err="", ts=1)
    coll.merge(batch)
    text = "\n".join(f"{s.labels.get('fingerprint')}={int(s.value)}" for fam in coll.collect() for s in fam.samples
                     if s.name == "fasterdata_statements_total")
    assert sorted(text.split("\n")) == ["d=4", "e=5", "other=6"]


def test_prometheus_applications_are_capped() -> None:
    """application_name set per process (`worker-<pid>`) must not multiply the series without end."""
    coll = StatsCollector(top_k=5, top_apps=2, max_keys=50)
    for round_ in range(3):
        batch = BatchStats()
        batch.add("a", "db", "billing", dur_us=10**6, rows=1, err="", ts=1)
        batch.add("b", "db", "shop", dur_us=10**5, rows=1, err="", ts=1)
        for pid in range(40):
            for fp in ("a", "b"):
                batch.add(fp, "db", f"worker-{round_}-{pid}", dur_us=10, rows=1, err="", ts=1)
        coll.merge(batch)
    calls = {(s.labels["fingerprint"], s.labels["app"]): int(s.value) for fam in coll.collect()
             for s in fam.samples if s.name == "fasterdata_statements_total"}
    assert {app for _fp, app in calls} == {"billing", "shop", "other"}
    assert calls[("a", "billing")] == 3 and calls[("b", "shop")] == 3
    assert sum(calls.values()) == 3 * 82  # nothing lost in the folding
    assert len(coll.data) <= 50 + 1  # once full, a new application folds into (other, db, other)


def test_cli_reports_bad_rules_and_settings(tmp_path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    table: t\n    operation: upsert\n")
    assert cli.main(["analyze", "--rules", str(bad), "--metrics", ""]) == 2
    err = capsys.readouterr().err
    assert "rule 'x'" in err and "operation" in err
    assert cli.main(["analyze", "--batch", "0"]) == 2
    assert "batch" in capsys.readouterr().err
    cfg = tmp_path / "fasterdata.yaml"
    cfg.write_text("analyze:\n  batch: 77\n  no_such_key: 1\n")
    assert cli.main(["analyze", "--config", str(cfg)]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_idle_consumers_without_pending_entries_are_forgotten(r: redis.Redis, prefix: str, events: Events) -> None:
    stream = stream_name(prefix)
    w = make_worker(prefix)
    events.stmt("SELECT 1", tag="SELECT", rows=1)
    events.stmt("SELECT 2", tag="SELECT", rows=1)
    r.xreadgroup("analyzers", "gone-with-work", {stream: ">"}, count=1)
    r.xgroup_createconsumer(stream, "analyzers", "gone-idle")
    time.sleep(0.01)
    w.upkeep.forget_idle_consumers(max_idle=0.001)
    names = {c["name"] for c in r.xinfo_consumers(stream, "analyzers")}
    assert "gone-idle" not in names and "gone-with-work" in names  # its entry still needs reclaiming


def test_a_worker_process_keeps_its_start_up_objects_out_of_collections() -> None:
    # tune_gc is process-wide, so it is checked in a process of its own
    code = ("import gc; from analyzers.worker import tune_gc; tune_gc(); "
            "print(gc.get_freeze_count() > 1000, gc.get_threshold()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["True", "50000"]


def test_prometheus_counts_do_not_wait_for_the_next_read(r: redis.Redis, prefix: str, events: Events,
                                                          start_worker) -> None:
    """With sparse traffic the worker blocks in its next read; the last commit's counts are published before
    that, not when the read returns (`--block 60`: the bound below is far shorter than the read)."""
    w = start_worker("p1", "--block", "60")
    wait_until(lambda: r.exists(stream_name(prefix)), what="the group to be created")
    events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)",
                [1, 1, "eu", "2.50"], tag="INSERT", rows=1)

    def counted() -> float | None:
        try:
            return samples(http_get(w.metrics_port)[1]).get(("fasterdata_business_sales", (("region", "eu"),)))
        except OSError:
            return None

    assert wait_until(counted, timeout=20, what=f"the sale in /metrics\n{w.log()}") == 2.5
    assert w.stop(signal.SIGTERM) == 0, w.log()
