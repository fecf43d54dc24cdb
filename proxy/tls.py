"""TLS for both legs: terminating clients, and reaching the upstream per libpq's sslmode.

Also a small sans-I/O reader for the one TLS message the proxy looks at itself: the client's ClientHello
(after SSLRequest, or first thing with ``sslnegotiation=direct``), whose ALPN offer decides, as in
PostgreSQL 17, whether the handshake is attempted at all.
"""

from __future__ import annotations

import ssl

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")

ALPN_PROTOCOL = "postgresql"  # PostgreSQL's ALPN protocol name (PostgreSQL 17+, libpq 17+)

# Largest TLSPlaintext fragment (RFC 8446 §5.1); a first record announcing more is left to OpenSSL.
MAX_RECORD_PAYLOAD = 1 << 14
_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 1
_ALPN_EXTENSION = 16
# Fatal alert no_application_protocol (RFC 7301 §3.2) as a plaintext record: what PostgreSQL 17's
# OpenSSL sends a client whose ALPN list lacks "postgresql", before any key exchange.
NO_APPLICATION_PROTOCOL_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78))


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """Context for TLS with clients (after SSLRequest, or direct); TLS 1.2 is the floor.

    ALPN offers "postgresql": a client that asks for it gets it, one that sends no ALPN extension is
    served as before. (Python's ssl answers a client offering only other protocols with no ALPN at
    all rather than an alert; the proxy refuses such clients itself, see :func:`client_hello_alpn`.)
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols([ALPN_PROTOCOL])
    return ctx


def first_record_size(data: bytes | bytearray) -> int | None:
    """Size of the TLS record ``data`` starts with, header included; None until the header is in."""
    if len(data) < 5:
        return None
    return 5 + int.from_bytes(data[3:5], "big")


def client_hello_alpn(record: bytes | bytearray) -> list[str] | None:
    """The ALPN protocol names offered by the ClientHello in ``record`` (one whole TLS record).

    None when the ClientHello has no ALPN extension. ValueError when ``record`` does not hold one
    complete, well-formed ClientHello (a hello fragmented over several records included): the
    caller then leaves the verdict to OpenSSL's handshake.
    """
    if len(record) < 9 or record[0] != _HANDSHAKE_RECORD or record[5] != _CLIENT_HELLO:
        raise ValueError("not a TLS record carrying a ClientHello")
    end = 9 + int.from_bytes(record[6:9], "big")
    if end > len(record):
        raise ValueError("the ClientHello continues in another record")
    body = bytes(record[9:end])
    pos = 2 + 32  # legacy_version, random
    pos = _vector_end(body, pos, 1)  # legacy_session_id
    pos = _vector_end(body, pos, 2)  # cipher_suites
    pos = _vector_end(body, pos, 1)  # legacy_compression_methods
    if pos == len(body):
        return None  # no extensions at all (pre-TLS 1.2 style hello)
    ext_end = _vector_end(body, pos, 2)
    pos += 2
    while pos < ext_end:
        if pos + 4 > ext_end:
            raise ValueError("truncated extension header")
        ext_type = int.from_bytes(body[pos : pos + 2], "big")
        data_end = _vector_end(body, pos + 2, 2)
        if data_end > ext_end:
            raise ValueError("extension runs past the extensions block")
        if ext_type == _ALPN_EXTENSION:
            return _protocol_names(body[pos + 4 : data_end])
        pos = data_end
    return None


def _vector_end(data: bytes, pos: int, width: int) -> int:
    """End of the length-prefixed vector at ``pos`` whose length field is ``width`` bytes."""
    if pos + width > len(data):
        raise ValueError("truncated ClientHello")
    end = pos + width + int.from_bytes(data[pos : pos + width], "big")
    if end > len(data):
        raise ValueError("truncated ClientHello")
    return end


def _protocol_names(ext: bytes) -> list[str]:
    """ProtocolNameList (RFC 7301 §3.1) → names; bytes outside ASCII are escaped, not trusted."""
    if _vector_end(ext, 0, 2) != len(ext):
        raise ValueError("malformed ALPN extension")
    names = []
    pos = 2
    while pos < len(ext):
        end = _vector_end(ext, pos, 1)
        if end == pos + 1:
            raise ValueError("empty ALPN protocol name")
        names.append(ext[pos + 1 : end].decode("ascii", "backslashreplace"))
        pos = end
    return names


def upstream_context(sslmode: str, rootcert: str | None = None) -> ssl.SSLContext | None:
    """Context for the upstream leg, or None when TLS is not to be attempted.

    As in libpq: ``prefer``/``require`` encrypt without checking the certificate (``require``
    with a CA file behaves like ``verify-ca``), ``verify-ca`` checks the chain, ``verify-full``
    the chain and the host name.
    """
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
    if sslmode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    verify = sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and rootcert)
    if verify:
        if rootcert:
            ctx.load_verify_locations(rootcert)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
