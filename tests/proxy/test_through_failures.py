"""Failures around the proxy: unreachable upstream, malformed client bytes, either side disappearing, leaks."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.backends import backend_alive
from tests.kit.polling import wait_until
from tests.kit.ports import free_port
from tests.kit.processes import Proxy, StartProxy
from tests.kit.procfs import fd_count
from tests.kit.rawclient import RawClient, errors
from tests.kit.services import direct_dsn


@pytest.mark.parametrize("kind", ["refused", "no answer"])
def test_upstream_unreachable(start_proxy: StartProxy, kind: str) -> None:
    """Upstream refusing or silent: the client gets a class-08 error naming the upstream, within the bound.

    "no answer" is a loopback listener whose accept queue is full: the kernel drops further SYNs, so the
    proxy's connect hangs until --connect-timeout fires.
    """
    with contextlib.ExitStack() as stack:
        if kind == "refused":
            where = f"127.0.0.1:{free_port()}"
        else:
            where = f"127.0.0.1:{stack.enter_context(silent_listener())}"
        proxy = start_proxy("--connect-timeout", "2", upstream=where)
        check_unreachable(proxy, where)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that never completes a TCP handshake: backlog 0, already filled by pending connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, server]:
            sock.close()


def check_unreachable(proxy: Proxy, where: str) -> None:
    with RawClient(proxy.port, timeout=10) as raw:
        raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
        replies = raw.rest()
    [error] = errors(replies)
    assert error["C"].startswith("08"), error
    assert where in error["M"], error
    assert error["S"] == "FATAL"
    with pytest.raises(psycopg.OperationalError, match=where):
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    assert "could not connect to upstream" in proxy.log()


MALFORMED = {
    "negative length": struct.pack("!ci", b"Q", -5),
    "length below 4": struct.pack("!ci", b"Q", 2),
    "over max message size": struct.pack("!ci", b"Q", 100_000) + b"select 1",
    "garbage before startup": b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_client_bytes(start_proxy: StartProxy, case: str) -> None:
    """Protocol violations end that session with SQLSTATE 08P01; a session opened before is untouched."""
    proxy = start_proxy("--max-message-size", "4096")
    with psycopg.connect(proxy.dsn(), autocommit=True) as bystander, RawClient(proxy.port) as raw:
        pid = 0
        if case != "garbage before startup":
            raw.login()
            pid = raw.backend_pid
        raw.send(MALFORMED[case])
        replies = raw.rest()  # until the proxy closes the connection (bounded by the socket timeout)
        assert replies, "no ErrorResponse before the connection closed"
        first = errors(replies)[0]
        assert first["C"] == "08P01", first
        assert bystander.execute("select 'unharmed'").fetchone() == ("unharmed",)
        if pid:
            wait_until(lambda: not backend_alive(pid))
    assert "closing session" in proxy.log()


def test_server_terminates_backend(proxy: Proxy) -> None:
    """pg_terminate_backend: the server's FATAL 57P01 reaches the client, then the connection closes."""
    with RawClient(proxy.port) as raw:
        raw.login()
        with psycopg.connect(direct_dsn(), autocommit=True) as admin:
            assert admin.execute("select pg_terminate_backend(%s)", [raw.backend_pid]).fetchone() == (True,)
        replies = raw.rest()
        assert raw.eof
        assert [e["C"] for e in errors(replies)] == ["57P01"]


def test_server_terminates_backend_psycopg(proxy: Proxy) -> None:
    """The same with a driver: the next statement fails with AdminShutdown and the connection is closed."""
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    with psycopg.connect(direct_dsn(), autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", [conn.info.backend_pid])
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    assert conn.closed
    conn.close()


def test_client_vanishes_mid_transaction(proxy: Proxy) -> None:
    """A client that disappears (RST, no Terminate) inside a transaction: its backend goes away."""
    raw = RawClient(proxy.port)
    raw.login()
    pid = raw.backend_pid
    replies = raw.query("begin; create temp table vanish(x int); insert into vanish values (1)")
    assert replies[-1][:2] == (wire.READY, bytes((wire.TXN_BLOCK,)))
    assert backend_alive(pid)
    raw.abort()
    wait_until(lambda: not backend_alive(pid), timeout=10)


def test_client_closes_politely_mid_transaction(proxy: Proxy) -> None:
    """A client that closes its socket (FIN) while idle in transaction: the backend goes too."""
    raw = RawClient(proxy.port)
    raw.login()
    pid = raw.backend_pid
    raw.query("begin; select 1")
    raw.close()
    wait_until(lambda: not backend_alive(pid), timeout=10)


def test_no_descriptor_leak(proxy: Proxy) -> None:
    """100 sessions opened and closed (some failing at login) leave the proxy's fd count where it was."""
    pid = proxy.proc.pid
    with psycopg.connect(proxy.dsn()) as warm:  # anything created lazily on first use exists from here on
        warm.execute("select 1")
    time.sleep(0.5)  # closing is asynchronous: let the warm-up session's sockets go first
    baseline = fd_count(pid)
    for i in range(100):
        if i % 10 == 9:
            with pytest.raises(psycopg.OperationalError, match="does not exist"):
                psycopg.connect(proxy.dsn("fd_no_such_database"))
            continue
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("select %s", [i])
    for _ in range(5):  # and a few that vanish abruptly
        raw = RawClient(proxy.port)
        raw.login()
        raw.abort()
    wait_until(lambda: fd_count(pid) <= baseline + 2, timeout=10)
