"""Promise: the proxy terminates client TLS when given --tls-cert/--tls-key, and only then.

With a certificate, SSLRequest is answered 'S' and the handshake uses at least TLS 1.2; clients
that verify the certificate (libpq verify-full, an asyncpg SSLContext) accept it for
localhost/127.0.0.1. Without one, the proxy answers 'N': sslmode=require fails, prefer goes on in
plaintext, as against a PostgreSQL server with ssl=off.
"""

from __future__ import annotations

import socket
import ssl
import struct
import warnings

import asyncpg
import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@pytest.fixture(scope="module")
def tls_proxy(module_proxy, private_cluster: PrivateCluster, proxy_cert: tuple[str, str]) -> ProxyProcess:
    cert, key = proxy_cert
    return module_proxy("--tls-cert", cert, "--tls-key", key, upstream=private_cluster.address)


@pytest.fixture(scope="module")
def plain_proxy(module_proxy, private_cluster: PrivateCluster) -> ProxyProcess:
    return module_proxy(upstream=private_cluster.address)


def _ssl_answer(port: int) -> bytes:
    """Send an SSLRequest and return the proxy's one-byte answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        return sock.recv(1)


def _wait_for_log(proxy: ProxyProcess, text: str, timeout: float = 10.0) -> str:
    """The proxy's log line containing ``text``; the proxy writes it asynchronously."""
    lines = wait_until(lambda: [line for line in proxy.log().splitlines() if text in line],
                       lambda: f"a log line with {text!r}:\n{proxy.log()}", timeout)
    return lines[-1]


def test_sslrequest_answered_s(tls_proxy: ProxyProcess) -> None:
    assert _ssl_answer(tls_proxy.port) == b"S"


@pytest.mark.parametrize("user", ["trustuser", "md5user", "scramuser"])
def test_psycopg_sslmode_require(tls_proxy: ProxyProcess, private_cluster: PrivateCluster, user: str) -> None:
    """The client leg is TLS (libpq says so) and queries run; SCRAM clients bind no channel here
    unless the upstream leg is plaintext, see test_channel_binding."""
    extra = {"channel_binding": "disable"} if user == "scramuser" else {}
    dsn = tls_proxy.dsn(user=user, password=private_cluster.password(user), sslmode="require", **extra)
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user, 6 * 7").fetchone() == (user, 42)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_psycopg_verify_full(tls_proxy: ProxyProcess, ca_file: str, host: str) -> None:
    """The proxy's certificate verifies against the test CA for both names in its SAN."""
    dsn = (f"host={host} hostaddr=127.0.0.1 port={tls_proxy.port} user=trustuser dbname=postgres "
           f"sslmode=verify-full sslrootcert={ca_file}")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select count(*) from generate_series(1, 1000)").fetchone() == (1000,)


def test_psycopg_verify_full_wrong_name(tls_proxy: ProxyProcess, ca_file: str) -> None:
    """Negative control: the client really checks the proxy's certificate name."""
    dsn = (f"host=db.example.invalid hostaddr=127.0.0.1 port={tls_proxy.port} user=trustuser "
           f"dbname=postgres sslmode=verify-full sslrootcert={ca_file}")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(dsn)


async def test_asyncpg_ssl_context(tls_proxy: ProxyProcess, private_cluster: PrivateCluster,
                                   ca_file: str) -> None:
    """asyncpg with a verifying SSLContext (its sslmode becomes verify-full: 'N' would be an error)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    conn = await asyncpg.connect(host="127.0.0.1", port=tls_proxy.port, user="md5user", database="postgres",
                                 password=private_cluster.password("md5user"), ssl=ctx)
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()


def test_tls_1_2_is_the_minimum(tls_proxy: ProxyProcess) -> None:
    """A client that offers at most TLS 1.1 is refused by the proxy during the handshake."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 only offers TLS < 1.2 at level 0
        except (ValueError, ssl.SSLError) as exc:
            pytest.skip(f"local OpenSSL cannot build a TLS 1.1 client context: {exc}")
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as sock:
        client = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        try:
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                pytest.fail(f"the proxy accepted {tls.version()}")
        except ssl.SSLError as exc:
            if exc.reason in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "UNSUPPORTED_PROTOCOL") \
                    and "ALERT" not in str(exc):
                pytest.skip(f"local OpenSSL refuses to offer TLS 1.1 at all: {exc}")
    # The refusal came from the proxy's side: it logs the failed handshake and why.
    assert "unsupported protocol" in _wait_for_log(tls_proxy, f"TLS handshake with {client} failed").lower()

    # Positive control: the same kind of context capped at TLS 1.2 gets through.
    ctx12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx12.check_hostname = False
    ctx12.verify_mode = ssl.CERT_NONE
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        with ctx12.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"


def test_without_certificate_answers_n(plain_proxy: ProxyProcess) -> None:
    assert _ssl_answer(plain_proxy.port) == b"N"


def test_without_certificate_require_fails(plain_proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL was required"):
        psycopg.connect(plain_proxy.dsn(user="trustuser", sslmode="require"))


def test_without_certificate_prefer_works(plain_proxy: ProxyProcess, private_cluster: PrivateCluster) -> None:
    dsn = plain_proxy.dsn(user="scramuser", password=private_cluster.password("scramuser"), sslmode="prefer")
    with psycopg.connect(dsn) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("scramuser",)
