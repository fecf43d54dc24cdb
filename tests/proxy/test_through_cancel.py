"""CancelRequest through the proxy: it arrives on a new connection and must reach the right backend."""

from __future__ import annotations

import asyncio
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.backends import backend_alive, backend_running
from tests.kit.polling import wait_until
from tests.kit.processes import Proxy, StartProxy
from tests.kit.rawclient import RawClient

BOUND = 15  # seconds; far less than the 30 s statement, far more than a cancel needs


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel(proxy: Proxy, method: str) -> None:
    """conn.cancel() (PQcancel) and cancel_safe() (libpq ≥ 17 cancel connection, SSLRequest first)."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        pid = conn.info.backend_pid
        running = pool.submit(conn.execute, "select pg_sleep(30) -- fd cancel test")
        wait_until(lambda: backend_running(pid, "fd cancel test"), "the statement to run", BOUND)
        getattr(conn, method)()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            running.result(timeout=BOUND)
        assert info.value.sqlstate == "57014"
        assert "user request" in str(info.value)
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)


async def test_asyncpg_timeout_cancels(proxy: Proxy) -> None:
    """asyncpg's timeout sends a CancelRequest through the proxy; the connection is usable right after."""
    conn = await asyncpg.connect(proxy.url())
    try:
        pid = conn.get_server_pid()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("select pg_sleep(30) -- fd asyncpg timeout", timeout=1)
        # If the cancel had been lost, the backend would still be sleeping and this would block.
        assert await asyncio.wait_for(conn.fetchval("select 42"), BOUND) == 42
        assert not await asyncio.to_thread(backend_running, pid, "fd asyncpg timeout")
    finally:
        await conn.close()


async def test_asyncpg_task_cancellation(proxy: Proxy) -> None:
    """Cancelling the asyncio task that awaits a query cancels the query on the server."""
    conn = await asyncpg.connect(proxy.url())
    try:
        pid = conn.get_server_pid()
        task = asyncio.ensure_future(conn.execute("select pg_sleep(30) -- fd task cancel"))
        await asyncio.to_thread(wait_until, lambda: backend_running(pid, "fd task cancel"), "the statement to run",
                                BOUND)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(conn.fetchval("select 7"), BOUND) == 7
    finally:
        await conn.close()


def test_cancel_request_with_unknown_key_is_harmless(proxy: Proxy) -> None:
    """A CancelRequest with the wrong secret closes quietly and cancels nothing."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        pid = conn.info.backend_pid
        running = pool.submit(conn.execute, "select 1 from pg_sleep(1) -- fd wrong key")
        wait_until(lambda: backend_running(pid, "fd wrong key"), "the statement to run", BOUND)
        with RawClient(proxy.port) as raw:
            raw.send(struct.pack("!iiii", 16, wire.CANCEL_REQUEST_CODE, pid, 12345))
            assert raw.rest() == []  # no reply; the proxy closes the connection
        assert running.result(timeout=BOUND).fetchone() == (1,)
        assert backend_alive(pid)


def test_the_cancel_connection_closes_only_after_the_server_closed_its_side(start_proxy: StartProxy) -> None:
    """Clients take the close of their cancel connection to mean the cancel was processed (libpq waits for it,
    asyncpg sends its next query only then), so the proxy passes the upstream's close on, never its own first.

    The upstream here is a listener the test controls: it holds the forwarded cancel connection open while
    the test looks at the client's side, then closes it.
    """
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        proxy = start_proxy("--upstream-sslmode", "disable", upstream=f"127.0.0.1:{upstream.getsockname()[1]}")
        packet = struct.pack("!iiii", 16, wire.CANCEL_REQUEST_CODE, 4242, 777)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=BOUND) as client:
            client.sendall(packet)
            upstream.settimeout(BOUND)
            forwarded, _ = upstream.accept()
            with forwarded:
                forwarded.settimeout(BOUND)
                got = b""
                while len(got) < len(packet) and (chunk := forwarded.recv(len(packet) - len(got))):
                    got += chunk
                assert got == packet  # passed on untouched
                client.setblocking(False)
                with pytest.raises(BlockingIOError):  # no EOF yet: the server has not answered
                    client.recv(1)
            client.settimeout(BOUND)
            assert client.recv(1) == b""  # the server closed, so the client's cancel connection closes
