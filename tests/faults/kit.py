"""Helpers for the fault-injection suite: certificates, /metrics reads, raw TLS probes, fd and backend probes.

Everything waits with a bound (a hang becomes a failure) and asserts no speed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import TypeVar

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from fasterdata.proxy import wire

T = TypeVar("T")


def self_signed(where: Path, name: str) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1/localhost whose CN is ``name``."""
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def proxy_peer_cert(port: int) -> bytes:
    """The certificate the proxy presents to a new client: SSLRequest by hand, then a TLS handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S", "the proxy declined TLS"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls_sock:
            cert = tls_sock.getpeercert(binary_form=True)
            assert cert is not None
            return cert


def http(url: str, context: ssl.SSLContext | None = None, auth: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a GET; 4xx/5xx are answers, not exceptions."""
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the proxy's plain-HTTP /metrics (0 when absent)."""
    status, _headers, text = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return 0.0


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def backends(dsn: str, marker: str) -> list[int]:
    """Pids of backends whose application_name is ``marker`` (seen over a direct connection)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("select pid from pg_stat_activity where application_name = %s", (marker,)).fetchall()
    return [r[0] for r in rows]


def abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client vanishes instead of saying goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
