"""Clients that vanish (RST, no Terminate) in the middle of a COPY or an open transaction: the proxy must
close the upstream session (the backend leaves pg_stat_activity, its transaction rolls back) and give back
every file descriptor."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.backends import backends
from tests.kit.polling import wait_until
from tests.kit.processes import StartProxy
from tests.kit.procfs import fd_count
from tests.kit.rawclient import RawClient
from tests.kit.redisserver import RedisServer
from tests.kit.services import direct_dsn

ROUNDS = 5


@pytest.fixture
def table_db(scratch_db: str) -> Iterator[str]:
    with psycopg.connect(direct_dsn(scratch_db), autocommit=True) as conn:
        conn.execute("create table items (id int, note text)")
    yield scratch_db


def _count(dbname: str) -> int:
    with psycopg.connect(direct_dsn(dbname), autocommit=True) as conn:
        return conn.execute("select count(*) from items").fetchone()[0]  # type: ignore[index]


def _settled(pid: int, baseline: int, dbname: str, marker: str) -> bool:
    return not backends(direct_dsn(dbname), marker) and fd_count(pid) <= baseline


def test_client_vanishes_mid_copy(start_proxy: StartProxy, private_redis: RedisServer, table_db: str) -> None:
    proxy = start_proxy("--redis", private_redis.url)
    marker = f"fault-copy-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(table_db), autocommit=True) as warm:  # sink and loop fully set up
        warm.execute("select 1")
    baseline = fd_count(proxy.proc.pid)
    for _ in range(ROUNDS):
        raw = RawClient(proxy.port)
        raw.login(table_db, application_name=marker)
        raw.send(wire.message("Q", b"copy items from stdin\0"))
        raw.until("G")  # CopyInResponse: the backend is inside COPY FROM STDIN
        raw.send(b"".join(wire.message("d", f"{i}\trow {i}\n".encode()) for i in range(1000)))
        wait_until(lambda: backends(direct_dsn(table_db), marker), "the backend to be in COPY")
        raw.abort()
    wait_until(lambda: _settled(proxy.proc.pid, baseline, table_db, marker),
               "the COPY backends to go and the proxy's fds to return to baseline")
    assert _count(table_db) == 0  # no COPY was completed
    with psycopg.connect(proxy.dsn(table_db), autocommit=True) as conn:
        assert conn.execute("select 'fine'").fetchone() == ("fine",)


def test_client_vanishes_mid_transaction(start_proxy: StartProxy, private_redis: RedisServer,
                                         table_db: str) -> None:
    proxy = start_proxy("--redis", private_redis.url)
    marker = f"fault-txn-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(table_db), autocommit=True) as warm:
        warm.execute("select 1")
    baseline = fd_count(proxy.proc.pid)
    for _ in range(ROUNDS):
        raw = RawClient(proxy.port)
        raw.login(table_db, application_name=marker)
        last = raw.query("begin; insert into items values (1, 'never committed')")[-1]
        assert last[1] == b"T"  # ReadyForQuery: in a transaction block
        raw.abort()
    wait_until(lambda: _settled(proxy.proc.pid, baseline, table_db, marker),
               "the backends to go and the proxy's fds to return to baseline")
    assert _count(table_db) == 0  # every open transaction was rolled back
