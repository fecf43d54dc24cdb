"""Direct TLS on the client leg (PostgreSQL 17's ``sslnegotiation=direct``, asyncpg's ``direct_tls``).

The client skips SSLRequest and opens with a TLS ClientHello (first byte 0x16). With a certificate
the proxy runs the handshake at once and startup continues inside TLS as after SSLRequest + 'S';
like PostgreSQL 17 it insists on ALPN "postgresql": a hello offering only other protocols gets the
no_application_protocol alert, one without ALPN is closed after the handshake. Without a
certificate the connection is closed with one log line. Real drivers, the machine's PostgreSQL, and
the shared Redis under the proxy's private prefix.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from fasterdata.proxy import tls, wire
from tests.kit.certs import TestPKI
from tests.kit.metrics import metric
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy, stop_all
from tests.kit.rawclient import RawClient
from tests.kit.services import PG_USER
from tests.kit.streams import captured

LIBPQ = psycopg.pq.version()
needs_libpq17 = pytest.mark.skipif(
    LIBPQ < 170000, reason=f"psycopg's libpq {LIBPQ} predates sslnegotiation=direct (libpq 17)")
NO_CERT_LINE = "client started TLS directly (sslnegotiation=direct) but the proxy has no tls_cert"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("direct-tls-pki"))


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[ProxyProcess]:
    """A capturing proxy with a certificate for localhost/127.0.0.1 issued by ``pki``."""
    cert, key = pki.issue("proxy")
    p = ProxyProcess(tmp_path_factory.mktemp("direct-tls"), "--tls-cert", str(cert), "--tls-key", str(key))
    yield p
    stop_all([p])


def client_context(alpn: list[str] | None, ca: Path | None = None) -> ssl.SSLContext:
    """A client context; verifies against ``ca`` when given, else accepts any certificate."""
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def captured_with(proxy: ProxyProcess, app: str, *fragments: str) -> list[str]:
    """``captured(proxy, app)`` once, for each of ``fragments``, a statement containing it is among them,
    else []. Statements of one session reach the stream in separate writes (a transaction's when it ends),
    so a wait must name every statement the test then looks at."""
    got = captured(proxy, app)
    return got if all(any(fragment in sql for sql in got) for fragment in fragments) else []


def log_lines(proxy: ProxyProcess, text: str) -> list[str]:
    return [line for line in proxy.log().splitlines() if text in line]


def active(proxy: ProxyProcess) -> float:
    return metric(proxy.metrics_port, "fasterdata_proxy_connections_active")


class BioTLS:
    """A TLS client driven through ssl.MemoryBIO over a plain socket: the test decides how the
    ClientHello is cut into TCP segments. Has the socket methods RawClient uses."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def client_hello(self) -> bytes:
        with pytest.raises(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()

    def send_in_pieces(self, data: bytes, cuts: list[int]) -> None:
        """Send ``data`` as separate segments split at ``cuts``, pausing so they arrive apart."""
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            self.sock.sendall(data[start:end])
            time.sleep(0.15)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        self.incoming.write(chunk)

    def sendall(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.obj.read(size)
            except ssl.SSLWantReadError:
                try:
                    self._fill()
                except ConnectionError:
                    return b""
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return b""

    def close(self) -> None:
        self.sock.close()


# -- drivers ------------------------------------------------------------------------------------


async def test_asyncpg_direct_tls_runs_and_is_captured(tls_proxy: ProxyProcess, pki: TestPKI) -> None:
    """asyncpg direct_tls=True, certificate verified, ALPN as the asyncpg docs ask: statements run and
    reach the stream like any other session's; the proxy logs the session as direct TLS."""
    app = f"direct-apg-{uuid.uuid4().hex[:8]}"
    ctx = client_context(["postgresql"], ca=pki.ca_cert)
    conn = await asyncpg.connect(host="localhost", port=tls_proxy.port, user=PG_USER, database="postgres",
                                 ssl=ctx, direct_tls=True, server_settings={"application_name": app})
    try:
        assert await conn.fetchval("select 6 * 7 as direct_answer") == 42
        assert await conn.fetchval("select $1::int + 1 as direct_param", 41) == 42
        async with conn.transaction():
            assert await conn.fetchval("select count(*) from generate_series(1, 500)") == 500
    finally:
        await conn.close()
    got = wait_until(lambda: captured_with(tls_proxy, app, "direct_answer", "direct_param", "generate_series"),
                     "the three statements to reach the stream")
    assert sum("direct_" in q or "generate_series" in q for q in got) == 3, got
    wait_until(lambda: log_lines(tls_proxy, f"application={app} (TLS, direct)"), "the session's log line")


async def test_asyncpg_sslmode_require_sets_alpn_itself(tls_proxy: ProxyProcess) -> None:
    """With ssl='require' asyncpg builds its own context, which offers ALPN postgresql."""
    conn = await asyncpg.connect(host="127.0.0.1", port=tls_proxy.port, user=PG_USER, database="postgres",
                                 ssl="require", direct_tls=True)
    try:
        assert await conn.fetchval("select 'via direct tls'") == "via direct tls"
    finally:
        await conn.close()


@needs_libpq17
def test_psycopg_sslnegotiation_direct(tls_proxy: ProxyProcess, pki: TestPKI) -> None:
    """libpq's sslnegotiation=direct with verify-full: TLS from the first byte, queries captured."""
    app = f"direct-pg-{uuid.uuid4().hex[:8]}"
    dsn = (f"host=localhost hostaddr=127.0.0.1 port={tls_proxy.port} user={PG_USER} dbname=postgres "
           f"sslmode=verify-full sslrootcert={pki.ca_cert} sslnegotiation=direct application_name={app}")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select %s::text as direct_psycopg", ["x"]).fetchone() == ("x",)
        with conn.cursor() as cur:
            cur.execute("select generate_series(1, 3000)")
            assert len(cur.fetchall()) == 3000
    got = wait_until(lambda: captured_with(tls_proxy, app, "direct_psycopg", "generate_series"),
                     "both statements to reach the stream")
    assert sum("direct_psycopg" in q or "generate_series" in q for q in got) == 2, got


# -- refusals, as PostgreSQL 17 ------------------------------------------------------------------


def test_alpn_without_postgresql_gets_the_alert(tls_proxy: ProxyProcess) -> None:
    """A hello offering ALPN but not "postgresql" is answered with no_application_protocol before any
    key exchange; one log line names the peer and the offer."""
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as sock:
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            client_context(["http/1.1", "h2"]).wrap_socket(sock, server_hostname="localhost")
    line = wait_until(lambda: log_lines(tls_proxy, f"closing connection from {peer}:"), "the refusal to be logged")
    assert len(line) == 1 and "'http/1.1', 'h2'" in line[0] and "'postgresql'" in line[0], line
    wait_until(lambda: active(tls_proxy) == 0, "the refused connection to be forgotten")


def test_alpn_refusal_when_the_hello_arrives_in_pieces(tls_proxy: ProxyProcess) -> None:
    """The proxy waits for the whole first record before judging it: a ClientHello cut into three
    segments still gets the alert (read by the client's own TLS library)."""
    client = BioTLS(tls_proxy.port, client_context(["http/1.1"]))
    try:
        hello = client.client_hello()
        client.send_in_pieces(hello, [3, 40])
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            client.handshake()
    finally:
        client.close()


async def test_asyncpg_context_without_alpn_is_closed(tls_proxy: ProxyProcess) -> None:
    """An SSLContext without ALPN (asyncpg leaves ALPN to the caller's context): the handshake completes,
    then the connection is closed, as PostgreSQL 17 closes it; the log says why."""
    before = len(log_lines(tls_proxy, "without ALPN 'postgresql'"))
    with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        conn = await asyncpg.connect(host="127.0.0.1", port=tls_proxy.port, user=PG_USER, database="postgres",
                                     ssl=client_context(None), direct_tls=True, timeout=10)
        await conn.close()
    wait_until(lambda: len(log_lines(tls_proxy, "without ALPN 'postgresql'")) == before + 1, "the refusal line")
    wait_until(lambda: active(tls_proxy) == 0, "the refused connection to be forgotten")


# -- startup inside direct TLS --------------------------------------------------------------------


def test_hello_in_pieces_then_login_inside_tls(tls_proxy: ProxyProcess) -> None:
    """The ClientHello in three segments reaches the TLS layer whole and in order; inside TLS an
    SSLRequest is answered 'N' (already encrypted, as PostgreSQL does) and the session works."""
    client = BioTLS(tls_proxy.port, client_context(["postgresql"]))
    raw = RawClient(tls_proxy.port, sock=client)
    try:
        client.send_in_pieces(client.client_hello(), [1, 7])
        client.handshake()
        assert client.obj.selected_alpn_protocol() == "postgresql"
        raw.send(wire.ssl_request())
        assert raw.recv_raw(1) == b"N"
        raw.login()
        assert raw.backend_pid
        [row] = [m for m in raw.query("select 'split hello'") if m[0] == wire.DATA_ROW]
        assert b"split hello" in row[1]
    finally:
        client.close()


def test_raw_direct_tls_login_and_query(tls_proxy: ProxyProcess) -> None:
    """A plain TLS socket (no PostgreSQL negotiation at all) with ALPN postgresql can log in."""
    with RawClient(tls_proxy.port) as raw:
        raw.sock = client_context(["postgresql"]).wrap_socket(raw.sock, server_hostname="localhost")
        assert raw.sock.selected_alpn_protocol() == "postgresql"
        raw.login(application_name="direct-raw")
        assert raw.query("select 1")[-1][0] == wire.READY


@pytest.mark.parametrize("where", ["direct, half a hello", "direct, mid-handshake", "sslrequest, mid-handshake"])
def test_reset_during_the_handshake_is_not_counted(tls_proxy: ProxyProcess, where: str) -> None:
    """A client that vanishes (RST) before the handshake ends leaves no session behind."""
    wait_until(lambda: active(tls_proxy) == 0, "earlier tests' sessions to end")
    client = BioTLS(tls_proxy.port, client_context(["postgresql"]))
    hello = client.client_hello()
    if where.startswith("sslrequest"):
        client.sock.sendall(wire.ssl_request())
        assert client.sock.recv(1) == b"S"
    if where.endswith("half a hello"):
        client.sock.sendall(hello[: len(hello) // 2])
    else:
        client.sock.sendall(hello)
        assert client.sock.recv(65536)  # the server's first flight: the handshake is under way
    wait_until(lambda: active(tls_proxy) == 1, "the connection to be counted")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_until(lambda: active(tls_proxy) == 0, "the reset connection to be forgotten", timeout=15)
    assert "Traceback" not in tls_proxy.log()


@pytest.mark.parametrize("where", ["direct, half a hello", "sslrequest, no hello"])
def test_login_timeout_covers_the_handshake(start_proxy: StartProxy, pki: TestPKI, where: str) -> None:
    """client_login_timeout runs from the first byte through the handshake, on both paths; the stalled
    client is closed (no PostgreSQL error in the middle of TLS) and not left counted."""
    cert, key = pki.issue("timeout")
    proxy = start_proxy("--no-capture", "--client-login-timeout", "1", "--tls-cert", str(cert), "--tls-key", str(key))
    client = BioTLS(proxy.port, client_context(["postgresql"]))
    try:
        hello = client.client_hello()
        if where.startswith("sslrequest"):
            client.sock.sendall(wire.ssl_request())
            assert client.sock.recv(1) == b"S"
        else:
            client.sock.sendall(hello[:20])
        assert client.sock.recv(65536) == b""  # closed by the proxy, with nothing written
    finally:
        client.close()
    wait_until(lambda: log_lines(proxy, "TLS handshake not completed within client_login_timeout"), "the line")
    wait_until(lambda: active(proxy) == 0, "the stalled connection to be forgotten")
    with psycopg.connect(proxy.dsn(sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# -- the classic path -----------------------------------------------------------------------------


def test_sslrequest_path_still_works(tls_proxy: ProxyProcess, pki: TestPKI) -> None:
    """SSLRequest + 'S' as before: libpq (which offers ALPN) verifies and runs queries; a raw client
    offering ALPN gets "postgresql", one offering none is still served."""
    dsn = (f"host=localhost hostaddr=127.0.0.1 port={tls_proxy.port} user={PG_USER} dbname=postgres "
           f"sslmode=verify-full sslrootcert={pki.ca_cert}")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 'classic'").fetchone() == ("classic",)
    for alpn, selected in ((["postgresql"], "postgresql"), (None, None)):
        with RawClient(tls_proxy.port) as raw:
            raw.send(wire.ssl_request())
            assert raw.recv_raw(1) == b"S"
            raw.sock = client_context(alpn).wrap_socket(raw.sock, server_hostname="localhost")
            assert raw.sock.selected_alpn_protocol() == selected
            raw.login()
            assert raw.query("select 1")[-1][0] == wire.READY


def test_sslrequest_then_alpn_without_postgresql_gets_the_alert(tls_proxy: ProxyProcess) -> None:
    """PostgreSQL 17 applies its ALPN rule after SSLRequest too: a hello offering only other protocols gets
    no_application_protocol (before, the proxy's ssl module ignored such an offer and went on)."""
    with RawClient(tls_proxy.port) as raw:
        peer = f"127.0.0.1:{raw.sock.getsockname()[1]}"
        raw.send(wire.ssl_request())
        assert raw.recv_raw(1) == b"S"
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            client_context(["http/1.1"]).wrap_socket(raw.sock, server_hostname="localhost")
    line = wait_until(lambda: log_lines(tls_proxy, f"closing connection from {peer}:"), "the refusal to be logged")
    assert "TLS after SSLRequest offering ALPN ['http/1.1']" in line[0], line
    wait_until(lambda: active(tls_proxy) == 0, "the refused connection to be forgotten")


def test_unencrypted_data_after_sslrequest_is_refused(tls_proxy: ProxyProcess) -> None:
    """A StartupMessage sent with the SSLRequest, before the answer, would otherwise count as if it had come
    through TLS (CVE-2021-23214, the injection PostgreSQL refuses): an ErrorResponse instead of 'S', then close."""
    before = len(log_lines(tls_proxy, "received unencrypted data after SSL request"))
    with RawClient(tls_proxy.port) as raw:
        raw.send(wire.ssl_request() + wire.startup_message({"user": PG_USER, "database": "postgres"}))
        assert raw.recv_raw(1) == b"E"
        rest = b""
        while chunk := raw.sock.recv(4096):
            rest += chunk
        assert b"08P01" in rest and b"received unencrypted data after SSL request" in rest
    wait_until(lambda: len(log_lines(tls_proxy, "received unencrypted data after SSL request")) > before)
    with RawClient(tls_proxy.port) as raw:  # the next client, doing it right, is served
        raw.send(wire.ssl_request())
        assert raw.recv_raw(1) == b"S"


# -- no certificate -------------------------------------------------------------------------------


async def test_without_tls_cert_direct_tls_is_closed_cleanly(start_proxy: StartProxy) -> None:
    """No tls_cert: a direct-TLS client is closed with one log line naming it and the reason; no
    traceback, no session left counted, and the proxy keeps serving (a session open meanwhile too)."""
    proxy = start_proxy("--no-capture")
    held = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            peer = f"127.0.0.1:{sock.getsockname()[1]}"
            with pytest.raises((ssl.SSLError, ConnectionError)):
                client_context(["postgresql"]).wrap_socket(sock, server_hostname="localhost")
        lines = wait_until(lambda: log_lines(proxy, f"closing connection from {peer}: {NO_CERT_LINE}"),
                           "the no-certificate line")
        assert len(lines) == 1, lines

        with pytest.raises((ConnectionError, OSError, asyncpg.InterfaceError)):
            conn = await asyncio.wait_for(asyncpg.connect(host="127.0.0.1", port=proxy.port, user=PG_USER,
                                                          database="postgres", ssl="require", direct_tls=True), 10)
            await conn.close()
        if LIBPQ >= 170000:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(proxy.dsn(sslmode="require", sslnegotiation="direct"), connect_timeout=10)
        expected = 3 if LIBPQ >= 170000 else 2
        wait_until(lambda: len(log_lines(proxy, NO_CERT_LINE)) == expected, "one line per refused client")

        assert held.execute("select 'still here'").fetchone() == ("still here",)
        with psycopg.connect(proxy.dsn(), connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        wait_until(lambda: active(proxy) == 1, "only the held session to be counted")
    finally:
        held.close()
    log = proxy.log()
    assert "Traceback" not in log and "invalid startup packet length" not in log, log


# -- the ClientHello reader -----------------------------------------------------------------------


def _hello(alpn: list[str] | None) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(alpn).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("alpn", [None, ["postgresql"], ["h2", "http/1.1"], ["x", "postgresql"]])
def test_client_hello_alpn_reads_openssl_hellos(alpn: list[str] | None) -> None:
    hello = _hello(alpn)
    size = tls.first_record_size(hello)
    assert size == len(hello)
    assert tls.client_hello_alpn(hello) == alpn


def test_client_hello_alpn_rejects_what_it_cannot_read() -> None:
    hello = _hello(["postgresql"])
    assert tls.first_record_size(hello[:4]) is None
    for bad in (hello[:60], b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", wire.ssl_request() + bytes(20)):
        with pytest.raises(ValueError):
            tls.client_hello_alpn(bad)
