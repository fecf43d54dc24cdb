"""The PrivateCluster helper itself: other suites rely on restart/kill/reconfigure doing what they say."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster
from tests.kit.procfs import pid_alive


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A cluster of its own (ssl off): this module kills it, which the shared one should not see."""
    c = PrivateCluster()
    yield c
    c.destroy()


def test_roles_have_the_promised_password_hashes(cluster: PrivateCluster) -> None:
    stored = dict(cluster.execute("select rolname, rolpassword from pg_authid where rolpassword is not null"))
    assert stored["md5user"].startswith("md5")
    assert stored["scramuser"].startswith("SCRAM-SHA-256$")
    assert cluster.execute("show wal_level") == [("logical",)]
    assert cluster.execute("show ssl") == [("off",)]


def test_restart_keeps_address_and_data(cluster: PrivateCluster) -> None:
    cluster.execute("create table if not exists survives (v int)")
    cluster.execute("insert into survives values (1)")
    port, pid = cluster.port, cluster.pid
    cluster.restart()
    assert cluster.port == port
    assert cluster.pid != pid
    assert cluster.execute("select count(*) from survives") == [(1,)]


def test_kill_then_start_recovers(cluster: PrivateCluster) -> None:
    """kill() is a crash: every server process gone; start() runs crash recovery on the same port."""
    cluster.execute("create table if not exists crash (v int)")
    cluster.execute("insert into crash values (1)")
    pid = cluster.pid
    assert pid is not None
    cluster.kill()
    assert not cluster.is_running()
    assert not pid_alive(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(), connect_timeout=5)
    cluster.start()
    assert cluster.execute("select count(*) from crash") == [(1,)]
    assert "database system was interrupted" in cluster.log()


def test_reconfigured_restores(cluster: PrivateCluster) -> None:
    with cluster.reconfigured(settings={"work_mem": "'7MB'"}, hba=["host all postgres 127.0.0.1/32 reject"]):
        assert cluster.execute("show work_mem") == [("7MB",)]  # the admin socket still works
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            psycopg.connect(cluster.dsn(), connect_timeout=5)
    with psycopg.connect(cluster.dsn()) as conn:
        assert conn.execute("show work_mem").fetchone() == ("4MB",)


def test_destroy_leaves_nothing() -> None:
    c = PrivateCluster()
    pid, root = c.pid, c.root
    assert pid is not None and root.exists()
    c.destroy()
    assert not pid_alive(pid)
    assert not root.exists()
