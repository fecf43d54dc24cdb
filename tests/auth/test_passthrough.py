"""Promise: authentication passes through the proxy untouched.

The proxy never authenticates anyone itself: trust, md5 and SCRAM-SHA-256 are negotiated between
the client and the server, a wrong password gets the server's own error, and no password (right
or wrong) ever reaches the proxy's log, even at debug level.
"""

from __future__ import annotations

import os
import subprocess

import asyncpg
import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster, pg_bin
from tests.kit.processes import ProxyProcess

USERS = ["trustuser", "md5user", "scramuser"]
METHOD = {"trustuser": "trust", "md5user": "md5", "scramuser": "scram-sha-256"}
WRONG_PASSWORD = "Wrong-Pw-9f3c1e77a2"


@pytest.fixture(scope="module")
def proxy(module_proxy, private_cluster: PrivateCluster) -> ProxyProcess:
    """The proxy as users run it (upstream_sslmode defaults to prefer), logging at debug level."""
    return module_proxy("--log-level", "debug", upstream=private_cluster.address)


def _auth_line(cluster: PrivateCluster, user: str) -> str:
    """The server log line recording how ``user`` authenticated (log_connections=on)."""
    marker = f'identity="{user}"'
    lines = [line for line in cluster.log().splitlines() if "connection authenticated" in line and marker in line]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("user", USERS)
def test_psycopg_login(proxy: ProxyProcess, private_cluster: PrivateCluster, user: str) -> None:
    """psycopg 3 (libpq) logs in with each method; the server, not the proxy, decided how."""
    dsn = proxy.dsn(user=user, password=private_cluster.password(user), application_name=f"pt-{user}")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
        # libpq only sends a password when the server asked for one.
        assert conn.pgconn.used_password is (user != "trustuser")
    if user != "trustuser":
        assert f"method={METHOD[user]}" in _auth_line(private_cluster, user)


@pytest.mark.parametrize("user", USERS)
async def test_asyncpg_login(proxy: ProxyProcess, private_cluster: PrivateCluster, user: str) -> None:
    """asyncpg has its own md5/SCRAM implementation; it must work through the proxy as well."""
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=user, database="postgres",
                                 password=private_cluster.password(user))
    try:
        assert await conn.fetchval("select current_user") == user
    finally:
        await conn.close()


@pytest.mark.parametrize("user", USERS)
def test_psql_login(proxy: ProxyProcess, private_cluster: PrivateCluster, user: str) -> None:
    """psql with PGPASSWORD, the way scripts log in."""
    result = private_cluster.psql("select current_user", dsn=proxy.dsn(user=user),
                                  password=private_cluster.password(user))
    assert result.stdout.strip() == user


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_wrong_password_psycopg(proxy: ProxyProcess, private_cluster: PrivateCluster, user: str) -> None:
    """The client gets the server's own FATAL message, exactly as when connecting directly."""
    with pytest.raises(psycopg.OperationalError) as direct:
        psycopg.connect(private_cluster.dsn(user=user, password=WRONG_PASSWORD, sslmode="disable"))
    with pytest.raises(psycopg.OperationalError) as proxied:
        psycopg.connect(proxy.dsn(user=user, password=WRONG_PASSWORD))
    expected = f'FATAL:  password authentication failed for user "{user}"'
    assert expected in str(direct.value)
    assert expected in str(proxied.value)
    assert "fasterdata" not in str(proxied.value)


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
async def test_wrong_password_asyncpg_sqlstate(proxy: ProxyProcess, user: str) -> None:
    """asyncpg exposes the ErrorResponse fields: SQLSTATE 28P01 comes from the server."""
    with pytest.raises(asyncpg.InvalidPasswordError) as err:
        await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=user, database="postgres",
                              password=WRONG_PASSWORD)
    assert err.value.sqlstate == "28P01"
    assert err.value.args[0] == f'password authentication failed for user "{user}"'


def test_wrong_password_psql(proxy: ProxyProcess, private_cluster: PrivateCluster) -> None:
    """psql reports the server's message and exits 2 (connection failure)."""
    result = private_cluster.psql("select 1", dsn=proxy.dsn(user="scramuser"), password=WRONG_PASSWORD,
                                  check=False)
    assert result.returncode == 2
    assert 'password authentication failed for user "scramuser"' in result.stderr


def test_missing_password(proxy: ProxyProcess) -> None:
    """No password at all: libpq gives up on the server's password request, not the proxy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PGPASSFILE"] = os.devnull
    result = subprocess.run([pg_bin("psql"), "-X", "-w", "-d", proxy.dsn(user="md5user"), "-c", "select 1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no password supplied" in result.stderr


async def test_log_never_contains_passwords(proxy: ProxyProcess, private_cluster: PrivateCluster) -> None:
    """Password and SASL messages pass through unread, so no secret is logged.

    Logs in (and fails to) with every driver first, so the check holds even when run alone.
    """
    for user in USERS:
        password = private_cluster.password(user)
        with psycopg.connect(proxy.dsn(user=user, password=password)):
            pass
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=user, database="postgres",
                                     password=password)
        await conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="md5user", password=WRONG_PASSWORD))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="scramuser", database="postgres",
                              password=WRONG_PASSWORD)
    log = proxy.log()
    assert "user=scramuser" in log, "the proxy log should record the sessions (is it the right file?)"
    for secret in [WRONG_PASSWORD, *(role.password for role in private_cluster.roles)]:
        assert secret not in log
