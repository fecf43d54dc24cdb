"""The proxy's own limits and its graceful shutdown, seen from real clients."""

from __future__ import annotations

import asyncio
import signal
import struct
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.backends import backend_alive, backend_running
from tests.kit.metrics import metric
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.rawclient import RawClient, errors

T = TypeVar("T")


@pytest.mark.parametrize(
    "sent", [b"", struct.pack("!ii", 40, wire.PROTOCOL_3) + b"user\0"], ids=["nothing", "half a startup packet"]
)
def test_client_login_timeout(start_proxy: StartProxy, sent: bytes) -> None:
    """A client that does not finish its startup packet in time is told why and disconnected."""
    proxy = start_proxy("--client-login-timeout", "1")
    with RawClient(proxy.port, timeout=15) as raw:
        raw.send(sent)
        replies = raw.rest()  # returns once the proxy closes the connection
        assert raw.eof
    assert [e["C"][:2] for e in errors(replies)] == ["08"]
    with psycopg.connect(proxy.dsn()) as conn:  # the proxy itself is fine
        assert conn.execute("select 1").fetchone() == (1,)


def test_client_login_timeout_spares_logged_in_sessions(start_proxy: StartProxy) -> None:
    """The login timer stops at the StartupMessage: an idle session outlives it."""
    proxy = start_proxy("--client-login-timeout", "1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select pg_sleep(1.5)")
        assert conn.execute("select 'alive'").fetchone() == ("alive",)


def probe_forgotten(proxy: ProxyProcess) -> None:
    """start_proxy's readiness check is a TCP connection too: until the proxy has seen it close, it counts
    against max_client_conn (with a limit of 1, the test's first client was refused in one CI run)."""
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_proxy_connections_active") == 0,
               "the readiness probe to be forgotten")


def test_connection_storm_is_logged_in_a_few_lines(start_proxy: StartProxy) -> None:
    """Thirty clients over max_client_conn: each is refused and counted, the log says so once (and, with
    --no-log-connections, nothing per session)."""
    proxy = start_proxy("--max-client-conn", "1", "--no-log-connections")
    probe_forgotten(proxy)
    with psycopg.connect(proxy.dsn(application_name="held"), autocommit=True) as held:
        for _ in range(30):
            with RawClient(proxy.port) as raw:
                raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
                [error] = errors(raw.rest())
            assert error["C"] == "53300"
        assert held.execute("select 1").fetchone() == (1,)
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_proxy_connections_refused_total") == 30)
    log = proxy.log()
    assert len([line for line in log.splitlines() if "max_client_conn (1) reached" in line]) == 1, log
    assert "application=held" not in log


def test_max_client_conn(start_proxy: StartProxy) -> None:
    """With --max-client-conn 3 the fourth client gets 53300 'too many connections', from every driver."""
    proxy = start_proxy("--max-client-conn", "3")
    probe_forgotten(proxy)
    held = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(3)]
    try:
        with RawClient(proxy.port) as raw:
            raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
            [error] = errors(raw.rest())
        assert error["C"] == "53300" and "too many connections" in error["M"]
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        with pytest.raises(asyncpg.TooManyConnectionsError):
            _run(asyncpg.connect(proxy.url(), timeout=10))
        for conn in held:
            assert conn.execute("select 1").fetchone() == (1,)
        # At the limit a CancelRequest (a connection of its own) must still get through.
        with ThreadPoolExecutor(1) as pool:
            pid = held[0].info.backend_pid
            running = pool.submit(held[0].execute, "select pg_sleep(30) -- fd cancel at limit")
            wait_until(lambda: backend_running(pid, "fd cancel at limit"), timeout=10)
            held[0].cancel_safe(timeout=10)
            with pytest.raises(psycopg.errors.QueryCanceled):
                running.result(timeout=15)
        held.pop().close()

        def fourth_connects() -> bool:
            try:
                with psycopg.connect(proxy.dsn(), connect_timeout=10) as conn:
                    return conn.execute("select 1").fetchone() == (1,)
            except psycopg.OperationalError:
                return False

        wait_until(fourth_connects, timeout=10)  # the freed slot is reusable
    finally:
        for conn in held:
            conn.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one asyncpg call from a sync test."""
    return asyncio.run(coro)


def test_sigterm_graceful_shutdown(start_proxy: StartProxy) -> None:
    """SIGTERM: a running statement completes, an idle session is closed, the proxy exits 0."""
    proxy = start_proxy("--shutdown-grace", "20")
    busy = psycopg.connect(proxy.dsn(), autocommit=True)
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        busy_pid, idle_pid = busy.info.backend_pid, idle.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(lambda: busy.execute("select 'done' from pg_sleep(2) -- fd sigterm").fetchone())
            wait_until(lambda: backend_running(busy_pid, "fd sigterm"), timeout=10)
            proxy.proc.send_signal(signal.SIGTERM)
            assert running.result(timeout=20) == ("done",)
        assert proxy.proc.wait(timeout=25) == 0, proxy.log()
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
        with pytest.raises(psycopg.OperationalError):
            busy.execute("select 1")
        wait_until(lambda: not backend_alive(idle_pid) and not backend_alive(busy_pid), timeout=10)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(), connect_timeout=5)
    finally:
        busy.close()
        idle.close()
