"""Analyzer test kit: a unique Redis prefix per test, an event writer that follows the event
contract, in-process workers that drain the stream, and workers run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import RulesFile, parse
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.proxy.events import BUNDLE_FIELD, BUNDLE_MAX, PACKED_FIELD, bundle, pack
from tests.conftest import REDIS_URL, RUN_ID, ChildProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def prefix(r: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    p = f"fdtest{RUN_ID}{uuid.uuid4().hex[:6]}"
    yield p
    keys = list(r.scan_iter(f"{p}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


class Events:
    """Writes statement events (schema v1) the way the proxy does: bundled by default (inside `with`, up to
    BUNDLE_MAX events an entry, as a batch of the proxy's sink; outside, one an entry), one an entry with
    entry="packed" or "flat"; with `shards` ≥ 2 to `<prefix>:statements:{i}`, the session id picking the
    stream (stable, as the proxy keeps a session)."""

    def __init__(self, client: redis.Redis, prefix: str, shards: int = 1, entry: str = "bundled") -> None:
        self.r = client
        self.entry = entry
        self.held: dict[str, list[dict[str, str]]] = {}  # stream → events of its next bundle
        self.streams = [k.statements for k in shard_keys(prefix, shards)]
        self.stream = self.streams[0]
        self.ts = int(time.time() * 1e6)
        self.pipe = None

    def stmt(self, sql: str, params: list[Any] | None = None, *, proto: str | None = None, tag: str = "",
             rows: int | None = None, txn: str = "autocommit", sid: str = "s1", txid: int = 1,
             app: str = "shop", db: str = "shop", user: str = "app", err: str = "", dur_us: int = 150,
             ts: int | None = None, part: str = "", n: int | None = None) -> None:
        if proto is None:
            proto = "extended" if params is not None else "simple"
        if ts is None:
            self.ts += 10
            ts = self.ts
        f = {"v": "1", "kind": "stmt", "ts": str(ts), "dur_us": str(dur_us), "sid": sid,
             "client": "127.0.0.1:50000", "user": user, "db": db, "app": app, "pid": "4242", "proto": proto,
             "sql": sql, "txid": str(txid), "txn": txn}
        if params is not None:
            f["params"] = json.dumps(params)
        if tag:
            f["tag"] = tag
        if part:
            f["part"] = part
        if n is not None:
            f["n"] = str(n)
        if rows is not None:
            f["rows"] = str(rows)
        if err:
            f["err"] = err
            f["errmsg"] = "failed"
            f.pop("tag", None)
        self._add(f, sid)

    def txn_end(self, sid: str, txid: int, outcome: str, stmts: int = 1, undone: str = "") -> None:
        self.ts += 10
        f = {"v": "1", "kind": "txn_end", "ts": str(self.ts), "sid": sid, "client": "127.0.0.1:50000",
             "user": "app", "db": "shop", "txid": str(txid), "txn": outcome, "stmts": str(stmts)}
        if undone:
            f["undone"] = undone
        self._add(f, sid)

    def _add(self, fields: dict[str, str], sid: str) -> None:
        stream = self.streams[int(hashlib.sha1(sid.encode()).hexdigest(), 16) % len(self.streams)]
        if self.entry == "bundled":
            held = self.held.setdefault(stream, [])
            held.append(fields)
            if self.pipe is None or len(held) == BUNDLE_MAX:
                self._bundle(stream)
            return
        packed = pack(fields) if self.entry == "packed" else None
        (self.pipe or self.r).xadd(stream, {PACKED_FIELD: packed} if packed is not None else fields)

    def _bundle(self, stream: str) -> None:
        held = self.held.pop(stream, [])
        if held:
            (self.pipe or self.r).xadd(stream, {BUNDLE_FIELD: bundle(held)})

    def __enter__(self) -> Events:
        self.pipe = self.r.pipeline(transaction=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in list(self.held):
            self._bundle(stream)
        pipe, self.pipe = self.pipe, None
        pipe.execute()


@pytest.fixture
def events(r: redis.Redis, prefix: str) -> Events:
    return Events(r, prefix)


@pytest.fixture
def packed_events(r: redis.Redis, prefix: str) -> Events:
    """One event an entry: for tests of what happens to single entries (pending, reclaimed, trimmed)."""
    return Events(r, prefix, entry="packed")


RULES = {
    "rules": [
        {"name": "sales", "table": "orders", "operation": "insert", "value": "total",
         "labels": ["region"], "aggregate": "sum", "scale": 2},
        {"name": "orders_placed", "table": "orders", "operation": "insert", "value": "rows", "aggregate": "sum"},
        {"name": "order_count", "table": "orders", "operation": "insert", "value": "total", "aggregate": "count"},
        {"name": "biggest", "table": "orders", "operation": "insert", "value": "total", "aggregate": "max"},
        {"name": "smallest", "table": "orders", "operation": "insert", "value": "total", "aggregate": "min"},
        {"name": "customers", "table": "orders", "operation": "insert", "value": "customer_id",
         "aggregate": "distinct"},
        {"name": "items_sold", "table": "order_items", "operation": "insert", "value": "quantity",
         "labels": ["sku"], "aggregate": "sum"},
        {"name": "stock_moves", "table": "inventory", "operation": "update", "value": {"delta": "qty"},
         "labels": ["sku"], "aggregate": "sum"},
        {"name": "cancelled", "table": "orders", "operation": "delete", "value": "rows", "aggregate": "sum"},
        {"name": "gl_postings", "table": "gl_entries", "operation": "insert", "value": "amount",
         "labels": ["account"], "aggregate": "sum", "scale": 2},
        {"name": "gl_debits", "table": "gl_entries", "operation": "insert", "value": "amount",
         "match": {"side": "D"}, "aggregate": "sum", "scale": 2},
        {"name": "bulk_loaded", "table": "orders", "operation": "copy", "value": "rows", "aggregate": "sum"},
    ],
    "security": {"new_fingerprint": {"enabled": False}},
    "anomaly": {"enabled": False},
}


def rules_file(**overrides: Any) -> RulesFile:
    data = json.loads(json.dumps(RULES))
    for key, value in overrides.items():
        data[key] = value
    return parse(data, "test rules")


def make_worker(prefix: str, rules: RulesFile | None = None, consumer: str = "w1", rules_path: str | None = None,
                **kw: Any) -> Worker:
    """An in-process worker (rules_path: the file a reload reads)."""
    if rules_path is not None:
        kw["rules"] = rules_path
    settings = AnalyzerSettings(redis=REDIS_URL, prefix=prefix, metrics="", consumer=consumer, block=0.05, **kw)
    worker = Worker(settings, rules or rules_file())
    worker.setup()
    return worker


def group_done(client: redis.Redis, streams: list[str], group: str = "analyzers") -> bool:
    """Nothing undelivered and nothing pending in `group` on any of `streams`."""
    for stream in streams:
        g = {x["name"]: x for x in client.xinfo_groups(stream)}.get(group)
        if g is None or g.get("lag") or g.get("pending"):
            return False
    return True


def drain(worker: Worker, limit: int = 1000) -> int:
    """Step until the group has nothing undelivered and nothing pending; returns entries processed."""
    total = 0
    for _ in range(limit):
        total += worker.run_once()
        total += worker.quiesce()  # no read-ahead left behind to swallow entries a later test step adds
        if group_done(worker.redis, worker.streams.names, worker.group):
            return total
    raise AssertionError("stream not drained")


def biz(client: redis.Redis, prefix: str, rule: str, shards: int = 1, aggregate: str = "sum") -> dict[str, str]:
    """A rule's aggregate hashes summed over all days (labels → raw stored value), merged over shards."""
    ks = shard_keys(prefix, shards)
    out: dict[str, int | float] = {}
    for day in merged.biz_days(client, ks, rule):
        for labels, value in merged.biz_values(client, ks, rule, day, aggregate).items():
            out[labels] = out.get(labels, 0) + (int(value) if value.lstrip("-").isdigit() else float(value))
    return out


class WorkerProcess(ChildProcess):
    """`python -m fasterdata.analyzers.cli analyze` as a subprocess, as operators run it."""

    def __init__(self, tmp: Path, prefix: str, rules_path: Path, consumer: str, *args: str,
                 env: dict[str, str] | None = None, redis_url: str = REDIS_URL) -> None:
        self.metrics_port = free_port()
        self.log_path = tmp / f"worker-{consumer}.log"
        cmd = [sys.executable, "-m", "fasterdata", "analyze", "--redis", redis_url, "--prefix", prefix,
               "--metrics", f"127.0.0.1:{self.metrics_port}", "--rules", str(rules_path),
               "--consumer", consumer, *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.fixture
def start_worker(tmp_path: Path, prefix: str) -> Iterator:
    """Factory: start_worker(consumer, *args, rules=RulesFile data, env=…, redis_url=…) → WorkerProcess;
    stopped at teardown."""
    started: list[WorkerProcess] = []
    rules_path = tmp_path / "rules.json"  # JSON is YAML
    rules_path.write_text(json.dumps(RULES))

    def start(consumer: str, *args: str, rules: dict | None = None, env: dict[str, str] | None = None,
              redis_url: str = REDIS_URL) -> WorkerProcess:
        path = rules_path
        if rules is not None:
            path = tmp_path / f"rules-{consumer}.json"
            path.write_text(json.dumps(rules))
        w = WorkerProcess(tmp_path, prefix, path, consumer, *args, env=env, redis_url=redis_url)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL if w.proc.poll() is None else signal.SIGTERM)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until predicate() is truthy (no wall-clock assertions: the timeout only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
