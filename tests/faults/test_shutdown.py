"""SIGTERM while a statement runs: it finishes within the grace period, the session's events all reach the
stream, or the spool when Redis is away (and a later proxy replays them), and the proxy exits 0."""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from fasterdata.proxy.streamkeys import stream_name
from tests.kit import processes
from tests.kit.backends import backend_running
from tests.kit.metrics import metric
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.redisserver import RedisServer
from tests.kit.streams import stream_events

STATEMENTS = 20


def _busy_session(proxy: ProxyProcess, app: str) -> None:
    """Some statements, then SIGTERM while pg_sleep(2) runs; that statement must still complete."""
    conn = psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10)
    try:
        for i in range(STATEMENTS):
            conn.execute(f"select {i} as fault_shutdown")
        pid = conn.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(lambda: conn.execute("select 'slept' from pg_sleep(2)").fetchone())
            wait_until(lambda: backend_running(pid, "pg_sleep(2)"), "pg_sleep to be running")
            proxy.proc.send_signal(signal.SIGTERM)
            assert running.result(timeout=30) == ("slept",)
        assert proxy.proc.wait(timeout=40) == 0, proxy.log()
    finally:
        conn.close()


def _mine(server: RedisServer, prefix: str, app: str) -> list[str]:
    return [ev["sql"] for ev in stream_events(server.client(), stream_name(prefix))
            if ev.get("app") == app and ev.get("kind") == "stmt"]


def _expected() -> list[str]:
    return [f"select {i} as fault_shutdown" for i in range(STATEMENTS)] + ["select 'slept' from pg_sleep(2)"]


def test_sigterm_flushes_events_to_redis(start_proxy: StartProxy, private_redis: RedisServer,
                                         tmp_path: Path) -> None:
    app = f"fault-term-{uuid.uuid4().hex[:8]}"
    proxy = start_proxy("--redis", private_redis.url, "--shutdown-grace", "20",
                        env={"FASTERDATA_SPOOL_DIR": str(tmp_path / "spool")})
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_sink_redis_up") == 1, "the sink to connect")
    _busy_session(proxy, app)
    assert _mine(private_redis, proxy.prefix, app) == _expected()


def test_sigterm_with_redis_down_spools_and_replays(start_proxy: StartProxy, private_redis: RedisServer,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = f"fault-spool-{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool"
    env = {"FASTERDATA_SPOOL_DIR": str(spool)}
    proxy = start_proxy("--redis", private_redis.url, "--shutdown-grace", "20", env=env)
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_sink_redis_up") == 1, "the sink to connect")
    private_redis.kill()
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_sink_redis_up") == 0, "the sink to notice")
    _busy_session(proxy, app)
    files = [p for p in spool.iterdir() if p.name.startswith(proxy.prefix) and p.stat().st_size > 0]
    assert files, f"nothing spooled:\n{proxy.log()}"

    # The spool is named after prefix and listen address: the successor takes over both.
    private_redis.start()
    ports = iter([proxy.port, processes.free_port()])
    monkeypatch.setattr(processes, "free_port", lambda: next(ports))
    successor = start_proxy("--redis", private_redis.url, "--prefix", proxy.prefix, env=env)
    assert successor.port == proxy.port
    wait_until(lambda: _mine(private_redis, proxy.prefix, app) == _expected(), "the spool to be replayed")
    wait_until(lambda: metric(successor.metrics_port, "fasterdata_sink_spool_events") == 0, "the spool to empty")
