"""TLS contexts for both legs: terminating clients, and reaching the upstream per libpq's sslmode."""

from __future__ import annotations

import ssl

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """Context for clients that send SSLRequest; TLS 1.2 is the floor."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


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
