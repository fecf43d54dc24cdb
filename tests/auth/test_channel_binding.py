"""Promise: SCRAM-SHA-256 works through the proxy in every leg combination that allows it.

SCRAM channel binding (SCRAM-SHA-256-PLUS, ``tls-server-end-point``) mixes a hash of the TLS
server certificate *the client saw* into the proof, and the server checks it against a hash of
*its own* certificate. Through a TLS-terminating proxy the client sees the proxy's certificate,
so whenever both legs are TLS and the two certificates differ, binding cannot succeed: that is
what binding is for (it detects exactly this man in the middle). The tests below record:

* client plaintext + upstream TLS: works (libpq needs the proxy to hide the server's -PLUS offer,
  see ``proxy.startup.drop_scram_plus``);
* client TLS + upstream plaintext: works (the server offers no -PLUS);
* both TLS: works with the client's ``channel_binding=disable``, or when the proxy presents the
  upstream's own certificate; fails with libpq's default ``channel_binding=prefer``.
"""

from __future__ import annotations

import ssl

import asyncpg
import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster
from tests.kit.processes import ProxyProcess

USER = "scramuser"
SSL_QUERY = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


def _login(dsn: str) -> tuple[bool, bool]:
    """Log in and return (client leg TLS, upstream leg TLS as the server sees it)."""
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == (USER,)
        row = conn.execute(SSL_QUERY).fetchone()
        assert row is not None
        return conn.pgconn.ssl_in_use, row[0]


def _scram_method_logged(cluster: PrivateCluster) -> bool:
    return f'identity="{USER}" method=scram-sha-256' in cluster.log()


@pytest.fixture(scope="module")
def plain_to_tls(module_proxy, private_cluster: PrivateCluster) -> ProxyProcess:
    """Client leg plaintext (no certificate), upstream leg TLS."""
    return module_proxy("--upstream-sslmode", "require", upstream=private_cluster.address)


@pytest.fixture(scope="module")
def tls_to_plain(module_proxy, private_cluster: PrivateCluster, proxy_cert: tuple[str, str]) -> ProxyProcess:
    """Client leg TLS, upstream leg plaintext."""
    cert, key = proxy_cert
    return module_proxy("--tls-cert", cert, "--tls-key", key, "--upstream-sslmode", "disable",
                        upstream=private_cluster.address)


@pytest.fixture(scope="module")
def tls_to_tls(module_proxy, private_cluster: PrivateCluster, proxy_cert: tuple[str, str]) -> ProxyProcess:
    """TLS on both legs, the proxy presenting its own certificate."""
    cert, key = proxy_cert
    return module_proxy("--tls-cert", cert, "--tls-key", key, "--upstream-sslmode", "require",
                        upstream=private_cluster.address)


# -- client plaintext, upstream TLS ---------------------------------------------------------------


def test_client_plain_upstream_tls_psycopg(plain_to_tls: ProxyProcess, private_cluster: PrivateCluster) -> None:
    """libpq's defaults (sslmode=prefer gets 'N', channel_binding=prefer) log in with SCRAM."""
    dsn = plain_to_tls.dsn(user=USER, password=private_cluster.password(USER))
    assert _login(dsn) == (False, True)
    assert _scram_method_logged(private_cluster)


def test_client_plain_upstream_tls_psql(plain_to_tls: ProxyProcess, private_cluster: PrivateCluster) -> None:
    result = private_cluster.psql(SSL_QUERY, dsn=plain_to_tls.dsn(user=USER),
                                  password=private_cluster.password(USER))
    assert result.stdout.strip() == "t"


async def test_client_plain_upstream_tls_asyncpg(plain_to_tls: ProxyProcess,
                                                 private_cluster: PrivateCluster) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=plain_to_tls.port, user=USER, database="postgres",
                                 password=private_cluster.password(USER))
    try:
        assert await conn.fetchval(SSL_QUERY) is True
    finally:
        await conn.close()


# -- client TLS, upstream plaintext ---------------------------------------------------------------


@pytest.mark.parametrize("channel_binding", ["prefer", "disable"])
def test_client_tls_upstream_plain_psycopg(tls_to_plain: ProxyProcess, private_cluster: PrivateCluster,
                                           channel_binding: str) -> None:
    """The server (not on TLS) offers only SCRAM-SHA-256, so there is nothing to bind to."""
    dsn = tls_to_plain.dsn(user=USER, password=private_cluster.password(USER), sslmode="require",
                           channel_binding=channel_binding)
    assert _login(dsn) == (True, False)


async def test_client_tls_upstream_plain_asyncpg(tls_to_plain: ProxyProcess, private_cluster: PrivateCluster,
                                                 ca_file: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=tls_to_plain.port, user=USER, database="postgres",
                                 password=private_cluster.password(USER),
                                 ssl=ssl.create_default_context(cafile=ca_file))
    try:
        assert await conn.fetchval(SSL_QUERY) is False
    finally:
        await conn.close()


# -- TLS on both legs -----------------------------------------------------------------------------


def test_both_tls_channel_binding_disabled(tls_to_tls: ProxyProcess, private_cluster: PrivateCluster) -> None:
    """The documented workaround: the client opts out of binding and authenticates with plain SCRAM."""
    dsn = tls_to_tls.dsn(user=USER, password=private_cluster.password(USER), sslmode="require",
                         channel_binding="disable")
    assert _login(dsn) == (True, True)
    result = private_cluster.psql("select current_user", dsn=dsn, password=private_cluster.password(USER))
    assert result.stdout.strip() == USER


async def test_both_tls_asyncpg(tls_to_tls: ProxyProcess, private_cluster: PrivateCluster,
                                ca_file: str) -> None:
    """asyncpg implements SCRAM-SHA-256 without -PLUS, so it never attempts binding."""
    conn = await asyncpg.connect(host="127.0.0.1", port=tls_to_tls.port, user=USER, database="postgres",
                                 password=private_cluster.password(USER),
                                 ssl=ssl.create_default_context(cafile=ca_file))
    try:
        assert await conn.fetchval(SSL_QUERY) is True
    finally:
        await conn.close()


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_both_tls_channel_binding_fails(tls_to_tls: ProxyProcess, private_cluster: PrivateCluster,
                                        channel_binding: str) -> None:
    """Observed failure mode with libpq's default (and with require): the server rejects the proof.

    The server, on TLS, offers SCRAM-SHA-256-PLUS; libpq, on TLS too, picks it and binds to the
    hash of the *proxy's* certificate; the server compares with the hash of its *own* and ends the
    login with FATAL "SCRAM channel binding check failed" (SQLSTATE 08P01). Hiding the -PLUS offer
    would not help: libpq would then send gs2 flag 'y' ("I could bind, but you cannot"), which a
    server that can bind rejects as a downgrade attack. Nothing a forwarding proxy can do fixes
    this without impersonating the server; hence channel_binding=disable, or the next test.
    """
    dsn = tls_to_tls.dsn(user=USER, password=private_cluster.password(USER), sslmode="require",
                         channel_binding=channel_binding)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn)
    assert "FATAL:  SCRAM channel binding check failed" in str(err.value)
    assert "SCRAM channel binding check failed" in private_cluster.log()


def test_both_tls_proxy_presents_server_certificate(start_proxy, private_cluster: PrivateCluster) -> None:
    """tls-server-end-point binds to the certificate, not to the TLS session: a proxy that presents
    the upstream's own certificate (and holds its key) gives both ends the same hash, so even
    channel_binding=require succeeds. A deployment option when the proxy is run by the database's
    operator."""
    assert private_cluster.server_cert is not None and private_cluster.server_key is not None
    proxy = start_proxy("--tls-cert", str(private_cluster.server_cert), "--tls-key",
                        str(private_cluster.server_key), "--upstream-sslmode", "require",
                        upstream=private_cluster.address)
    dsn = proxy.dsn(user=USER, password=private_cluster.password(USER), sslmode="require",
                    channel_binding="require")
    assert _login(dsn) == (True, True)
