"""Who may talk to the proxy: the client allow-list, the guarded metrics endpoints (the proxy's, the
analyzer's and `gl serve`'s: one implementation, so one guard), and certificate rotation on SIGHUP.
Loopback only: an allow-list that excludes 127.0.0.1 stands in for a foreign client.
"""

from __future__ import annotations

import base64
import shutil
import signal
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from fasterdata.proxy import wire
from tests.kit.certs import der, self_signed, server_and_client
from tests.kit.metrics import http, metric
from tests.kit.polling import wait_until
from tests.kit.ports import free_port, wait_port
from tests.kit.prefixes import delete_prefix
from tests.kit.processes import GLServeProcess, StartProxy, WorkerProcess
from tests.kit.rawclient import RawClient, errors
from tests.kit.services import PG_USER, REDIS_URL

from .kit import proxy_peer_cert


def test_allow_list_admits_listed_networks(start_proxy: StartProxy) -> None:
    """127.0.0.1/32 on the list: loopback clients work as without one."""
    proxy = start_proxy("--no-capture", "--allow-client", "127.0.0.1/32", "--allow-client", "::1/128")
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("select 'in'").fetchone() == ("in",)
    assert metric(proxy.metrics_port, "fasterdata_proxy_connections_denied_total") == 0


def test_allow_list_denies_others_after_startup(start_proxy: StartProxy) -> None:
    """Outside the list: 28000 with the address, told after the StartupMessage (so libpq shows it), counted."""
    proxy = start_proxy("--no-capture", "--allow-client", "10.0.0.0/8")
    before = metric(proxy.metrics_port, "fasterdata_proxy_connections_denied_total")  # start-up's port probe
    with pytest.raises(psycopg.OperationalError, match=r"connections from 127\.0\.0\.1 are not allowed"):
        psycopg.connect(proxy.dsn(), connect_timeout=10)
    with RawClient(proxy.port) as raw:
        raw.send(wire.ssl_request())
        assert raw.recv_raw(1) == b"N"  # the SSLRequest is answered normally: the refusal comes later
        raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
        [error] = errors(raw.rest())
    assert error["C"] == "28000" and error["M"] == "fasterdata: connections from 127.0.0.1 are not allowed"
    assert metric(proxy.metrics_port, "fasterdata_proxy_connections_denied_total") == before + 2


def test_allow_list_from_environment(start_proxy: StartProxy) -> None:
    """FASTERDATA_ALLOW_CLIENTS is comma-separated; loopback is not in this one."""
    proxy = start_proxy("--no-capture", env={"FASTERDATA_ALLOW_CLIENTS": "10.0.0.0/8, 192.168.0.0/16"})
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(proxy.dsn(), connect_timeout=10)


GOOD = "Basic " + base64.b64encode(b"scraper:s3cret pw").decode()
GUARD = ("--metrics-user", "scraper", "--metrics-password", "s3cret pw")


def guarded_certs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "pki").mkdir()
    return server_and_client(tmp_path / "pki")


def assert_guarded(port: int, ca: str, series: str) -> None:
    """Every endpoint wants HTTPS and the right credentials; with them, /metrics holds `series`."""
    ctx = ssl.create_default_context(cafile=ca)
    base = f"https://127.0.0.1:{port}"
    bad = "Basic " + base64.b64encode(b"scraper:wrong").decode()
    for path in ("/metrics", "/healthz", "/readyz"):
        status, headers, _ = http(base + path, ctx)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic "), path
        assert http(base + path, ctx, auth=bad)[0] == 401, path
        status, _, body = http(base + path, ctx, auth=GOOD)
        assert status == 200, (path, body)
    assert series in http(base + "/metrics", ctx, auth=GOOD)[2]
    with pytest.raises(OSError):  # plain HTTP gets no answer from a TLS port (URLError or a reset)
        http(f"http://127.0.0.1:{port}/healthz", auth=GOOD)


def test_metrics_basic_auth_and_tls(start_proxy: StartProxy, tmp_path: Path) -> None:
    """With user/password and a certificate, every endpoint wants HTTPS and the right credentials."""
    certs = guarded_certs(tmp_path)
    proxy = start_proxy("--no-capture", *GUARD, "--metrics-tls-cert", certs["cert"], "--metrics-tls-key", certs["key"])
    assert_guarded(proxy.metrics_port, certs["ca"], "fasterdata_proxy_connections_total")
    assert "s3cret" not in proxy.log()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of the test's own on the shared Redis, emptied afterwards."""
    name = f"fdtest-access-{uuid.uuid4().hex[:8]}"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    try:
        delete_prefix(r, name)
    finally:
        r.close()


def test_analyzer_metrics_basic_auth_and_tls(tmp_path: Path, prefix: str) -> None:
    """The analyzer's endpoint is guarded as the proxy's: flags, then the environment, as every setting."""
    certs = guarded_certs(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    worker = WorkerProcess(tmp_path, prefix, rules, "w1", *GUARD,
                           env={"FASTERDATA_METRICS_TLS_CERT": certs["cert"],
                                "FASTERDATA_METRICS_TLS_KEY": certs["key"]})
    try:
        wait_port(worker.metrics_port, timeout=30)
        assert_guarded(worker.metrics_port, certs["ca"], "fasterdata_analyzer_entries_total")
        assert "s3cret" not in worker.log()
    finally:
        assert worker.stop() == 0, worker.log()


def test_gl_serve_metrics_basic_auth_and_tls(tmp_path: Path, prefix: str) -> None:
    """`gl serve` (Flight, no follower) serves its series behind the same guard."""
    certs = guarded_certs(tmp_path)
    port = free_port()
    gl = GLServeProcess(tmp_path, "--no-follow", "--redis", REDIS_URL,
                        "--prefix", prefix, "--metrics", f"127.0.0.1:{port}",
                        *GUARD, "--metrics-tls-cert", certs["cert"], "--metrics-tls-key", certs["key"])
    try:
        wait_port(port, timeout=30)
        assert_guarded(port, certs["ca"], "fasterdata_gl_hits_total")
    finally:
        assert gl.stop() == 0, gl.log()


def test_analyzer_metrics_certificate_that_does_not_load(tmp_path: Path, prefix: str) -> None:
    """One line naming the file, exit 1, not a traceback."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    worker = WorkerProcess(tmp_path, prefix, rules, "w1",
                           "--metrics-tls-cert", str(bad), "--metrics-tls-key", str(bad))
    assert worker.proc.wait(60) == 1, worker.log()
    errors = [line for line in worker.log().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"cannot load the metrics certificate {bad}" in errors[0], worker.log()
    assert "Traceback" not in worker.log()


def test_metrics_basic_auth_without_tls(start_proxy: StartProxy) -> None:
    proxy = start_proxy("--no-capture", env={"FASTERDATA_METRICS_USER": "u", "FASTERDATA_METRICS_PASSWORD": "p"})
    url = f"http://127.0.0.1:{proxy.metrics_port}/metrics"
    assert http(url)[0] == 401
    assert http(url, auth="Basic " + base64.b64encode(b"u:p").decode())[0] == 200


def test_metrics_half_configured_is_a_config_error(tmp_path: Path) -> None:
    """A user without a password is refused at start-up, not silently left open."""
    from tests.kit.processes import ProxyProcess

    with pytest.raises(RuntimeError, match="must be set together"):
        ProxyProcess(tmp_path, "--no-capture", "--metrics-user", "u")


def test_tls_certificate_reloaded_on_sighup(start_proxy: StartProxy, tmp_path: Path) -> None:
    """SIGHUP re-reads tls_cert/tls_key: new sessions get the new certificate; a broken file keeps the old one."""
    a_cert, a_key = self_signed(tmp_path / "a", "fasterdata-cert-a")
    b_cert, b_key = self_signed(tmp_path / "b", "fasterdata-cert-b")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(a_cert, cert)
    shutil.copy(a_key, key)
    proxy = start_proxy("--no-capture", "--tls-cert", str(cert), "--tls-key", str(key))
    assert proxy_peer_cert(proxy.port) == der(a_cert)
    held = psycopg.connect(proxy.dsn(sslmode="require"), autocommit=True, connect_timeout=10)
    try:
        shutil.copy(b_cert, cert)
        shutil.copy(b_key, key)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: proxy_peer_cert(proxy.port) == der(b_cert), "the new certificate to be served")
        assert held.execute("select 'still here'").fetchone() == ("still here",)  # old session unharmed
        with psycopg.connect(proxy.dsn(sslmode="require"), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)

        cert.write_text("not a certificate\n")
        proxy.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the previous one" in proxy.log(), "the reload error to be logged")
        assert proxy.proc.poll() is None
        assert proxy_peer_cert(proxy.port) == der(b_cert)
    finally:
        held.close()


@pytest.mark.parametrize("allowed", [True, False])
def test_allow_list_with_ipv6_clients(start_proxy: StartProxy, allowed: bool) -> None:
    """A proxy listening on [::1]: an IPv6 client is matched against IPv6 networks of the list."""
    port = free_port("::1")
    networks = ["--allow-client", "10.0.0.0/8"] + (["--allow-client", "::1/128"] if allowed else [])
    proxy = start_proxy("--no-capture", "--listen", f"[::1]:{port}", *networks, wait=False)
    wait_port(port, host="::1")
    dsn = f"host=::1 port={port} user={PG_USER} dbname=postgres"
    if allowed:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("select 'in'").fetchone() == ("in",)
    else:
        with pytest.raises(psycopg.OperationalError, match=r"connections from ::1 are not allowed"):
            psycopg.connect(dsn, connect_timeout=10)
    assert proxy.proc.poll() is None
