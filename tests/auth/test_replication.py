"""Promise: replication connections pass through the proxy like any other.

Walsender sessions speak the simple-query protocol for their commands and then CopyBoth for the
stream; the proxy must forward both untouched. Proven with a logical replication connection
(IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, and pg_recvlogical consuming a change), and a
physical one (pg_basebackup with streamed WAL, authenticating with SCRAM as a REPLICATION role).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.kit.pgcluster import PrivateCluster, pg_bin
from tests.kit.processes import ProxyProcess


@pytest.fixture(scope="module")
def proxy(module_proxy, private_cluster: PrivateCluster) -> ProxyProcess:
    return module_proxy(upstream=private_cluster.address)


def _replication_conn(proxy: ProxyProcess) -> psycopg.Connection:
    """A logical walsender session through the proxy; ClientCursor keeps to the simple-query
    protocol, the only one a walsender accepts."""
    return psycopg.connect(proxy.dsn(user="postgres", replication="database"), autocommit=True,
                           cursor_factory=psycopg.ClientCursor)


def test_identify_system(proxy: ProxyProcess, private_cluster: PrivateCluster) -> None:
    with _replication_conn(proxy) as conn:
        systemid, timeline, xlogpos, dbname = conn.execute("IDENTIFY_SYSTEM").fetchone()  # type: ignore[misc]
    expected = private_cluster.execute("select system_identifier::text from pg_control_system()")[0][0]
    assert systemid == expected
    assert int(timeline) >= 1
    assert "/" in xlogpos
    assert dbname == "postgres"


def test_logical_decoding_through_proxy(proxy: ProxyProcess, private_cluster: PrivateCluster) -> None:
    """Slot created through the proxy, row inserted directly, change consumed through the proxy."""
    slot = f"fd_slot_{uuid.uuid4().hex[:8]}"
    table = f"fd_repl_{uuid.uuid4().hex[:8]}"
    private_cluster.execute(f"create table {table} (id int primary key, note text)")
    try:
        with _replication_conn(proxy) as conn:
            row = conn.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL test_decoding").fetchone()
            assert row is not None and row[0] == slot
        private_cluster.execute(f"insert into {table} values (1, 'through the proxy')")
        endpos = private_cluster.execute("select pg_current_wal_lsn()::text")[0][0]
        result = subprocess.run(
            [pg_bin("pg_recvlogical"), "-d", proxy.dsn(user="postgres"), "--slot", slot, "--start",
             "--endpos", endpos, "--no-loop", "-f", "-"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        assert result.returncode == 0, result.stderr
        assert f"table public.{table}: INSERT: id[integer]:1 note[text]:'through the proxy'" in result.stdout
        assert "COMMIT" in result.stdout
    finally:
        private_cluster.execute(
            f"select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{slot}'")
        private_cluster.execute(f"drop table if exists {table}")


def test_pg_basebackup_through_proxy(proxy: ProxyProcess, private_cluster: PrivateCluster,
                                     scratch_path: Path) -> None:
    """A physical replication connection as a SCRAM-authenticated REPLICATION role, WAL streamed
    over a second walsender connection at the same time."""
    target = scratch_path / "backup"
    env = {**os.environ, "PGPASSWORD": private_cluster.password("repluser"), "PGCONNECT_TIMEOUT": "10"}
    result = subprocess.run(
        [pg_bin("pg_basebackup"), "-d", proxy.dsn(user="repluser"), "-D", str(target), "-X", "stream",
         "-c", "fast", "--no-sync", "-w"],
        capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    assert (target / "PG_VERSION").read_text().strip() == "15"
    assert (target / "backup_label").exists()
    assert (target / "backup_manifest").exists()
    assert any((target / "pg_wal").iterdir()), "streamed WAL should be in the backup"
    verify = subprocess.run([pg_bin("pg_verifybackup"), "-n", str(target)], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
