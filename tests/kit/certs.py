"""Throw-away certificates for TLS tests, made with the openssl CLI (EC P-256, valid for a few days)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
LOCAL_SANS = ("DNS:localhost", "IP:127.0.0.1")


def openssl(*args: str, cwd: Path | None = None) -> None:
    """Run the openssl CLI; a failure raises with what openssl said."""
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


@dataclass
class TestPKI:
    """A test CA in ``directory`` (made on first use, reused after) and the certificates it issues."""

    __test__ = False  # not a pytest test class

    directory: Path
    name: str = "fasterdata test CA"

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = self.directory / "ca.key"
        self.ca_cert = self.directory / "ca.crt"
        if not self.ca_cert.exists():
            openssl("req", "-x509", *EC_KEY, "-keyout", self.ca_key.name, "-out", self.ca_cert.name, "-days", "3",
                    "-subj", f"/CN={self.name}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    cwd=self.directory)

    def issue(self, stem: str, cn: str = "localhost", sans: Sequence[str] = LOCAL_SANS,
              usage: str = "serverAuth") -> tuple[Path, Path]:
        """Issue a certificate for ``usage`` (serverAuth or clientAuth); returns (cert, key). The SAN is what
        clients verify."""
        key, csr, cert = (self.directory / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.directory / f"{stem}.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
            f"subjectAltName={','.join(sans)}\n")
        openssl("req", "-new", *EC_KEY, "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={cn}",
                cwd=self.directory)
        openssl("x509", "-req", "-in", csr.name, "-CA", self.ca_cert.name, "-CAkey", self.ca_key.name,
                "-CAcreateserial", "-out", cert.name, "-days", "3", "-extfile", ext.name, cwd=self.directory)
        csr.unlink()
        ext.unlink()
        key.chmod(0o600)
        return cert, key


def server_and_client(where: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as paths:
    ca, cert, key, client_cert, client_key."""
    pki = TestPKI(where)
    cert, key = pki.issue("server")
    client_cert, client_key = pki.issue("client", cn="client", usage="clientAuth")
    return {"ca": str(pki.ca_cert), "cert": str(cert), "key": str(key),
            "client_cert": str(client_cert), "client_key": str(client_key)}


def self_signed(where: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost whose CN is ``name``; (cert, key)."""
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    openssl("req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
            "-addext", f"subjectAltName={','.join(LOCAL_SANS)}")
    return cert, key


def der(cert: Path) -> bytes:
    """A PEM certificate file's DER bytes (what a TLS peer presents)."""
    return ssl.PEM_cert_to_DER_cert(cert.read_text())
