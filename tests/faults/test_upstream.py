"""PostgreSQL goes away under load and comes back: clients get clean errors, the proxy stays up, and new
sessions succeed once the server is back (tests/e2e/test_outage.py does the same for Redis)."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.pgcluster import PrivateCluster
from tests.kit.polling import wait_until
from tests.kit.processes import StartProxy
from tests.kit.rawclient import RawClient, errors
from tests.kit.redisserver import RedisServer

CLIENTS = 3


def _clean(exc: psycopg.OperationalError) -> bool:
    """Shutdown (57P0x), connection trouble (08xxx), or the socket just ending (no SQLSTATE)."""
    return exc.sqlstate is None or exc.sqlstate.startswith(("57P0", "08"))


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_postgres_restarted_mid_run(start_proxy: StartProxy, cluster: PrivateCluster,
                                    private_redis: RedisServer, how: str) -> None:
    """restart: a fast shutdown and start. crash: one backend SIGKILLed, so the postmaster ends every
    session (57P02) and runs crash recovery (57P03 meanwhile) before it takes connections again."""
    proxy = start_proxy("--redis", private_redis.url, "--connect-timeout", "5", upstream=cluster.address)
    stop = threading.Event()
    seen: Counter[str] = Counter()
    ok_after: Counter[int] = Counter()
    hit: set[int] = set()  # clients that saw an error
    restarted = threading.Event()
    lock = threading.Lock()

    def client(n: int) -> None:
        """Query in a loop; on an error, note its SQLSTATE and reconnect (anything but OperationalError fails)."""
        while not stop.is_set():
            try:
                with psycopg.connect(proxy.dsn(application_name=f"fault-restart-{n}"), autocommit=True,
                                     connect_timeout=10) as conn:
                    while not stop.is_set():
                        assert conn.execute("select count(*) from pg_class").fetchone()[0] > 0  # type: ignore[index]
                        if restarted.is_set():
                            with lock:
                                ok_after[n] += 1
            except psycopg.OperationalError as exc:
                assert _clean(exc), f"unexpected error {exc.sqlstate}: {exc}"
                with lock:
                    seen[exc.sqlstate or "closed"] += 1
                    hit.add(n)
                stop.wait(0.05)

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, n) for n in range(CLIENTS)]
        try:
            wait_until(lambda: len(cluster.execute(
                "select 1 from pg_stat_activity where application_name like 'fault-restart-%'")) == CLIENTS,
                "the clients to be connected")
            if how == "restart":
                cluster.restart("fast")
            else:
                [(victim,)] = cluster.execute(
                    "select pid from pg_stat_activity where application_name = 'fault-restart-0'")
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda: len(hit) == CLIENTS, "every session to be ended by the crash", timeout=60)
            restarted.set()
            wait_until(lambda: len(ok_after) == CLIENTS and min(ok_after.values()) >= 10,
                       "every client to work again after the restart", timeout=60)
        finally:
            stop.set()
        for f in futures:
            f.result(timeout=60)

    assert seen, "no client noticed the restart"
    assert proxy.proc.poll() is None
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("select 'back'").fetchone() == ("back",)
    assert "Traceback" not in proxy.log(), proxy.log()


def test_postgres_down_gives_08001_then_recovers(start_proxy: StartProxy, cluster: PrivateCluster) -> None:
    """While the server is stopped a new session gets the proxy's 08001; afterwards it works again."""
    proxy = start_proxy("--no-capture", upstream=cluster.address)
    cluster.stop("fast")
    try:
        with pytest.raises(psycopg.OperationalError, match="could not connect to upstream"):
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        with RawClient(proxy.port) as raw:  # libpq hides a login failure's SQLSTATE: read it off the wire
            raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
            [error] = errors(raw.rest())
        assert error["C"] == "08001"
        assert proxy.proc.poll() is None
    finally:
        cluster.start()
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
