"""Fixtures for the authentication/TLS/replication suite: one private cluster for the whole directory.

The machine's PostgreSQL is trust-only with ssl off, so everything here runs against a
:class:`~tests.kit.pgcluster.PrivateCluster` with ssl=on, wal_level=logical and md5/SCRAM users.
Tests that need a different pg_hba.conf or ssl=off use ``private_cluster.reconfigured(...)``,
which restores the shared configuration when the test ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.certs import TestPKI
from tests.kit.pgcluster import PrivateCluster
from tests.kit.processes import ProxyProcess, stop_all


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PrivateCluster]:
    """ssl=on (certificate for localhost/127.0.0.1 from a test CA), wal_level=logical, default roles."""
    cluster = PrivateCluster(ssl=True)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pki(private_cluster: PrivateCluster) -> TestPKI:
    """The CA that signed the cluster's certificate; it also issues the proxy's."""
    assert private_cluster.pki is not None
    return private_cluster.pki


@pytest.fixture(scope="session")
def ca_file(pki: TestPKI) -> str:
    return str(pki.ca_cert)


@pytest.fixture(scope="session")
def proxy_cert(pki: TestPKI) -> tuple[str, str]:
    """(cert, key) for the proxy's client-facing TLS: same CA, its own key, SAN localhost/127.0.0.1."""
    cert, key = pki.issue("proxy")
    return str(cert), str(key)


@pytest.fixture(scope="session")
def other_ca(private_cluster: PrivateCluster) -> str:
    """A CA that signed nothing we talk to: verifying against it must fail."""
    return str(TestPKI(private_cluster.root / "other-pki", name="unrelated test CA").ca_cert)


@pytest.fixture
def scratch_path(tmp_path: Path) -> Iterator[Path]:
    """A directory removed at teardown (pytest keeps tmp_path dirs of recent runs; backups are big)."""
    path = tmp_path / "scratch"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory like ``start_proxy`` but module-scoped, so a module's tests can share one proxy."""
    started: list[ProxyProcess] = []

    def start(*args: str, upstream: str) -> ProxyProcess:
        proc = ProxyProcess(tmp_path_factory.mktemp("proxy"), *args, upstream=upstream)
        started.append(proc)
        return proc

    yield start
    stop_all(started)
