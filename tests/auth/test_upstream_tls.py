"""Promise: the proxy→PostgreSQL leg is encrypted and verified as --upstream-sslmode says (libpq semantics).

The server's own view (``pg_stat_ssl`` for the serving backend) is the proof that the upstream
leg is encrypted; the client leg here is plaintext, so whatever TLS the server sees is the proxy's.
A verification failure must reach the client as a FATAL error of SQLSTATE class 08 that names the
upstream, rather than a silently dropped connection.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster, hba_ssl_only

SSL_QUERY = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"


def _upstream_ssl(dsn: str) -> tuple[bool, str | None]:
    with psycopg.connect(dsn) as conn:
        assert not conn.pgconn.ssl_in_use, "the client leg should be plaintext in these tests"
        row = conn.execute(SSL_QUERY).fetchone()
        assert row is not None
        return row[0], row[1]


async def _asyncpg_error(port: int, user: str = "trustuser") -> asyncpg.PostgresError:
    """The error asyncpg raises, which carries the ErrorResponse's SQLSTATE."""
    with pytest.raises(asyncpg.PostgresError) as err:
        await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="postgres", ssl=False)
    return err.value


@pytest.mark.parametrize(
    ("args", "encrypted"),
    [
        (["--upstream-sslmode", "disable"], False),
        (["--upstream-sslmode", "prefer"], True),
        (["--upstream-sslmode", "require"], True),
        (["--upstream-sslmode", "verify-ca", "--upstream-sslrootcert", "{ca}"], True),
        # The default server name is the upstream host, 127.0.0.1: matched by the IP SAN.
        (["--upstream-sslmode", "verify-full", "--upstream-sslrootcert", "{ca}"], True),
        (["--upstream-sslmode", "verify-full", "--upstream-sslrootcert", "{ca}",
          "--upstream-sslservername", "localhost"], True),
    ],
    ids=["disable", "prefer", "require", "verify-ca", "verify-full-ip", "verify-full-localhost"],
)
def test_upstream_leg_encryption(start_proxy, private_cluster: PrivateCluster, ca_file: str,
                                 args: list[str], encrypted: bool) -> None:
    """The server sees an encrypted connection exactly when the mode asks for TLS (ssl=on server)."""
    proxy = start_proxy(*(a.format(ca=ca_file) for a in args), upstream=private_cluster.address)
    ssl, version = _upstream_ssl(proxy.dsn(user="trustuser", sslmode="disable"))
    assert ssl is encrypted
    if encrypted:
        assert version in ("TLSv1.2", "TLSv1.3")


def test_verify_full_wrong_ca(start_proxy, private_cluster: PrivateCluster, other_ca: str) -> None:
    """A certificate from a CA we do not trust ends the session with a clear, upstream-naming error."""
    proxy = start_proxy("--upstream-sslmode", "verify-full", "--upstream-sslrootcert", other_ca,
                        upstream=private_cluster.address)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proxy.dsn(user="trustuser", sslmode="disable"))
    message = str(err.value)
    assert f"TLS to upstream {private_cluster.address} failed" in message
    assert "certificate verify failed" in message
    assert "TLS to upstream" in proxy.log()


async def test_verify_full_wrong_ca_sqlstate(start_proxy, private_cluster: PrivateCluster,
                                             other_ca: str) -> None:
    proxy = start_proxy("--upstream-sslmode", "verify-full", "--upstream-sslrootcert", other_ca,
                        upstream=private_cluster.address)
    error = await _asyncpg_error(proxy.port)
    assert error.sqlstate.startswith("08"), error.sqlstate
    assert private_cluster.address in str(error)


async def test_verify_full_wrong_host_name(start_proxy, private_cluster: PrivateCluster, ca_file: str) -> None:
    """The right CA but a name that is not in the certificate's SAN: refused (verify-full checks names)."""
    proxy = start_proxy("--upstream-sslmode", "verify-full", "--upstream-sslrootcert", ca_file,
                        "--upstream-sslservername", "db.example.invalid", upstream=private_cluster.address)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proxy.dsn(user="trustuser", sslmode="disable"))
    assert f"TLS to upstream {private_cluster.address} failed" in str(err.value)
    assert "db.example.invalid" in str(err.value) or "hostname mismatch" in str(err.value)
    error = await _asyncpg_error(proxy.port)
    assert error.sqlstate.startswith("08"), error.sqlstate


def test_verify_ca_ignores_host_name(start_proxy, private_cluster: PrivateCluster, ca_file: str) -> None:
    """verify-ca checks the chain only, as in libpq: a foreign name is fine, the CA is what counts."""
    proxy = start_proxy("--upstream-sslmode", "verify-ca", "--upstream-sslrootcert", ca_file,
                        "--upstream-sslservername", "db.example.invalid", upstream=private_cluster.address)
    assert _upstream_ssl(proxy.dsn(user="trustuser", sslmode="disable"))[0] is True


async def test_require_against_server_without_ssl(start_proxy, private_cluster: PrivateCluster) -> None:
    """ssl=off upstream: require refuses to go on in plaintext (class 08), prefer falls back to it."""
    with private_cluster.reconfigured(settings={"ssl": "off"}):
        strict = start_proxy("--upstream-sslmode", "require", upstream=private_cluster.address)
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(strict.dsn(user="trustuser", sslmode="disable"))
        assert f"upstream {private_cluster.address} does not accept TLS" in str(err.value)
        assert "require" in str(err.value)
        error = await _asyncpg_error(strict.port)
        assert error.sqlstate.startswith("08"), error.sqlstate

        lenient = start_proxy("--upstream-sslmode", "prefer", upstream=private_cluster.address)
        assert _upstream_ssl(lenient.dsn(user="trustuser", sslmode="disable")) == (False, None)


def test_hostssl_only_server(start_proxy, private_cluster: PrivateCluster) -> None:
    """A server whose pg_hba.conf accepts TLS connections only: reachable with require, refused
    (by the server, with its own message) with disable."""
    with private_cluster.reconfigured(hba=hba_ssl_only()):
        secure = start_proxy("--upstream-sslmode", "require", upstream=private_cluster.address)
        assert _upstream_ssl(secure.dsn(user="trustuser", sslmode="disable"))[0] is True
        scram = secure.dsn(user="scramuser", password=private_cluster.password("scramuser"), sslmode="disable")
        assert _upstream_ssl(scram)[0] is True

        plain = start_proxy("--upstream-sslmode", "disable", upstream=private_cluster.address)
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(plain.dsn(user="trustuser", sslmode="disable"))
        assert "pg_hba.conf rejects connection" in str(err.value)
        assert "no encryption" in str(err.value)
