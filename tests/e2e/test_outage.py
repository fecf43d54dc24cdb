"""Redis dies (SIGKILL) in the middle of a pgbench run through the proxy and comes back on the same port.

The clients must not notice (pgbench reports no failed transaction), and once the spool has been
replayed the stream must hold exactly one event per executed statement — none lost, none doubled —
in order per session. The private redis-server writes an fsynced append-only file, so what it held
before the kill survives the restart and the whole run can be counted.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import redis

from fasterdata.proxy.events import COMMITTED
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.metrics import http_get, scrape, settle, value
from tests.kit.pgbench import TPCB_KINDS, parse_pgbench, tpcb_kind
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.redisserver import RedisServer
from tests.kit.services import PG_USER
from tests.kit.streams import entries

CLIENTS = 4
PER_CLIENT = 500
RATE = 250  # transactions per second in all: pgbench runs ~8 s (2000/250) however fast the machine


def sink_value(proxy: ProxyProcess, name: str) -> float:
    """One sample from /metrics: the test follows the outage the way an operator would."""
    return value(scrape(proxy)[1], name)


def test_redis_killed_and_restarted_during_pgbench(start_proxy: StartProxy, tmp_path: Path, bench_db: str,
                                                   app_name: str) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    bench: subprocess.Popen | None = None
    try:
        proxy = start_proxy("--redis", server.url, env={"FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
        r: redis.Redis = server.client()
        stream = stream_name(proxy.prefix)
        wait_until(lambda: sink_value(proxy, "fasterdata_sink_redis_up") == 1, "the sink to connect")

        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(proxy.port), "PGUSER": PG_USER,
               "PGDATABASE": bench_db, "PGAPPNAME": app_name}
        bench = subprocess.Popen(["pgbench", "-c", str(CLIENTS), "-j", "2", "-t", str(PER_CLIENT), "-R", str(RATE)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        # Let a good part of the run reach Redis, then kill it while pgbench is in full swing.
        wait_until(lambda: r.xlen(stream) >= 400 or bench.poll() is not None, "events to reach redis")
        assert bench.poll() is None, "pgbench finished before the outage began"
        server.kill()
        assert bench.poll() is None, "pgbench finished before the outage began"

        # The proxy notices, spools what keeps coming, and stays ready: the spool takes the events.
        wait_until(lambda: sink_value(proxy, "fasterdata_sink_redis_up") == 0, "the sink to notice the outage")
        spooled_at_kill = sink_value(proxy, "fasterdata_sink_spooled_total")
        wait_until(lambda: sink_value(proxy, "fasterdata_sink_spooled_total") > spooled_at_kill + 100,
                   "events to be spooled during the outage")
        assert http_get(proxy.metrics_port, "/readyz")[0] == 200
        time.sleep(2)  # a couple of seconds of outage (not a measurement)
        outage_ended_early = bench.poll() is not None
        server.start()

        out, _ = bench.communicate(timeout=180)
        result = parse_pgbench(out)
        assert bench.returncode == 0, out
        assert (result.processed, result.failed) == (CLIENTS * PER_CLIENT, 0), out
        assert not outage_ended_early, "pgbench finished during the outage: the restart was not under load"

        samples = settle(proxy, timeout=120)
        assert value(samples, "fasterdata_sink_spooled_total") > 0
        assert value(samples, "fasterdata_sink_replayed_total") > 0
        assert value(samples, "fasterdata_sink_dropped_total") == 0
        events = [f for _id, f in entries(r, stream)]
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        server.destroy()

    mine = [ev for ev in events if ev.get("app") == app_name]
    assert len(mine) == len(events)  # nobody else writes to this private server
    script = [ev for ev in mine if tpcb_kind(ev["sql"])]
    setup = [ev for ev in mine if not tpcb_kind(ev["sql"])]

    # Exactly one event per executed statement: each statement of the script once per transaction.
    assert Counter(tpcb_kind(ev["sql"]) for ev in script) == {k: result.processed for k in TPCB_KINDS}
    assert {ev["txn"] for ev in script} == {COMMITTED}
    assert len(mine) == result.processed * len(TPCB_KINDS) + len(setup)
    assert setup and {ev["txn"] for ev in setup} == {"autocommit"}
    assert len({ev["sid"] for ev in setup}) == 1
    assert Counter(ev["sql"].split()[0] for ev in setup) == {"select": 2, "vacuum": 2, "truncate": 1}

    # No duplicates even across resent batches: each (session, transaction, statement) appears once.
    keys = Counter((ev["sid"], ev["txid"], tpcb_kind(ev["sql"])) for ev in script)
    assert max(keys.values()) == 1

    # Per session, stream order is the order the statements ran: ts never goes back.
    by_sid: dict[str, list[int]] = defaultdict(list)
    for ev in mine:
        by_sid[ev["sid"]].append(int(ev["ts"]))
    assert len(by_sid) == CLIENTS + 1
    for sid, stamps in by_sid.items():
        assert stamps == sorted(stamps), f"session {sid}: ts goes back in stream order"
    for sid in {ev["sid"] for ev in script}:
        kinds = [tpcb_kind(ev["sql"]) for ev in script if ev["sid"] == sid]
        assert kinds == list(TPCB_KINDS) * PER_CLIENT, sid
