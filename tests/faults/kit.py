"""Helpers for the fault-injection suite: raw TLS probes and clients that vanish."""

from __future__ import annotations

import contextlib
import socket
import ssl

from fasterdata.proxy import wire


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


def abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client vanishes instead of saying goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
