"""Helpers for the end-to-end suite: read the proxy's stream and /metrics, wait without asserting speed,
and run pgbench through the proxy.

Everything here talks to real processes over their real interfaces (Redis commands, HTTP, the pgbench
binary), so the suite proves what an operator would see.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

import redis
from prometheus_client.parser import text_string_to_metric_families

from fasterdata.proxy.events import events_of
from tests.conftest import PG_USER, ProxyProcess, wait_until

Event = dict[str, str]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# The statements of pgbench's built-in TPC-B script, as the proxy reports them (simple protocol: the
# statement without its ';'; prepared: pgbench's text with $n and the ';').
TPCB_KINDS = ("BEGIN", "UPDATE pgbench_accounts", "SELECT abalance", "UPDATE pgbench_tellers",
              "UPDATE pgbench_branches", "INSERT INTO pgbench_history", "END")
TPCB_TAGS = {"BEGIN": "BEGIN", "UPDATE pgbench_accounts": "UPDATE", "SELECT abalance": "SELECT",
             "UPDATE pgbench_tellers": "UPDATE", "UPDATE pgbench_branches": "UPDATE",
             "INSERT INTO pgbench_history": "INSERT", "END": "COMMIT"}


def tpcb_kind(sql: str) -> str | None:
    """Which TPC-B script statement ``sql`` is, or None for anything else (pgbench's own setup)."""
    for kind in TPCB_KINDS:
        if sql == kind or sql == kind + ";" or sql.startswith(kind + " "):
            return kind
    return None


# -- Redis ----------------------------------------------------------------------------------------

def read_stream(r: redis.Redis, key: str) -> list[tuple[str, Event]]:
    """Every entry of a stream, oldest first, as (id, event), each event of a bundled entry
    with that entry's id; the client must decode responses."""
    out: list[tuple[str, Event]] = []
    start = "-"
    while True:
        chunk = r.xrange(key, start, "+", count=5000)
        if not chunk:
            return out
        out.extend((entry_id, e) for entry_id, fields in chunk for e in events_of(fields))
        start = "(" + chunk[-1][0]


def statements(r: redis.Redis, prefix: str, **match: str) -> list[Event]:
    """The ``kind=stmt`` events of ``<prefix>:statements`` whose fields equal ``match``, in stream order."""
    return [f for _id, f in read_stream(r, f"{prefix}:statements")
            if f.get("kind") == "stmt" and all(f.get(k) == v for k, v in match.items())]


def dump_prefix(r: redis.Redis, prefix: str) -> str:
    """Every key under the prefix with all its content, whatever its type, as one text to search."""
    parts: list[str] = []
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        kind = r.type(key)
        parts.append(f"{kind} {key}")
        if kind == "stream":
            parts.extend(f"{i} {fields!r}" for i, fields in read_stream(r, key))
        elif kind == "string":
            parts.append(repr(r.get(key)))
        elif kind == "hash":
            parts.append(repr(r.hgetall(key)))
        elif kind == "list":
            parts.append(repr(r.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(repr(r.smembers(key)))
        elif kind == "zset":
            parts.append(repr(r.zrange(key, 0, -1, withscores=True)))
        else:
            parts.append(repr(r.dump(key)))
    return "\n".join(parts)


# -- HTTP and metrics -----------------------------------------------------------------------------

def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on the proxy's metrics port; a 503 is an answer, not an exception."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(proxy: ProxyProcess) -> tuple[str, Samples]:
    """The /metrics text and its samples keyed by (name, labels)."""
    status, text = http_get(proxy.metrics_port, "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing series reads 0 (a counter never incremented is not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def settle(proxy: ProxyProcess, timeout: float = 60.0) -> Samples:
    """Wait until every session has closed and every event it emitted is confirmed by Redis.

    Sessions emit their last events when they close (synchronously into the sink's queue), so once no
    session is open and neither memory nor spool holds an event, the stream is complete: what it holds
    can be counted exactly.
    """
    found: Samples = {}

    def quiet() -> bool:
        nonlocal found
        _text, found = scrape(proxy)
        return (value(found, "fasterdata_proxy_connections_active") == 0
                and value(found, "fasterdata_sink_queued") == 0
                and value(found, "fasterdata_sink_spool_events") == 0
                and value(found, "fasterdata_sink_redis_up") == 1)

    wait_until(quiet, "the proxy's sessions to close and its sink to drain", timeout)
    return found


# -- pgbench --------------------------------------------------------------------------------------

@dataclass
class Pgbench:
    """What pgbench reported: its own count of completed and failed transactions is the truth to match."""

    processed: int
    failed: int
    output: str


def pgbench(port: int, dbname: str, app: str, *args: str, timeout: float = 120.0) -> Pgbench:
    """Run pgbench against 127.0.0.1:port with application_name ``app``; parse what it reports."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": PG_USER,
           "PGDATABASE": dbname, "PGAPPNAME": app}
    env.pop("PGPASSWORD", None)
    done = subprocess.run(["pgbench", *args], env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"pgbench {' '.join(args)} exited {done.returncode}:\n{output}"
    return parse_pgbench(output)


def parse_pgbench(output: str) -> Pgbench:
    """The transaction counts from pgbench's summary (PostgreSQL 15 also prints the failed ones)."""
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed, output
    return Pgbench(int(processed.group(1)), int(failed.group(1)) if failed else 0, output)
