"""Connection startup through the proxy: parameters, SSL/GSS negotiation, protocol version negotiation."""

from __future__ import annotations

import socket
import struct

import asyncpg
import psycopg
import pytest

from fasterdata.proxy import wire
from tests.kit.processes import Proxy
from tests.kit.rawclient import RawClient, errors


def test_application_name_and_options_reach_the_server(proxy: Proxy) -> None:
    """StartupMessage parameters pass through untouched, including `options` with -c settings."""
    with psycopg.connect(
        proxy.dsn(), application_name="fd-startup-test", options="-c search_path=foo,public -c work_mem=7MB"
    ) as conn:
        row = conn.execute(
            "select current_setting('application_name'), current_setting('search_path'), "
            "current_setting('work_mem'), application_name from pg_stat_activity "
            "where pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("fd-startup-test", "foo,public", "7MB", "fd-startup-test")


async def test_asyncpg_server_settings(proxy: Proxy) -> None:
    """asyncpg sends server_settings as startup parameters."""
    conn = await asyncpg.connect(proxy.url(), server_settings={"application_name": "fd-apg", "search_path": "foo"})
    try:
        assert await conn.fetchval("select current_setting('application_name')") == "fd-apg"
        assert await conn.fetchval("select current_setting('search_path')") == "foo"
    finally:
        await conn.close()


def test_sslmode_prefer_connects_without_tls(proxy: Proxy) -> None:
    """Without a certificate the proxy answers SSLRequest with 'N'; sslmode=prefer falls back to plain."""
    with psycopg.connect(proxy.dsn(), sslmode="prefer") as conn:
        assert conn.info.pgconn.ssl_in_use is False
        assert conn.execute("select 1").fetchone() == (1,)


def test_sslmode_require_fails_clearly(proxy: Proxy) -> None:
    """sslmode=require gets libpq's own, clear refusal, not a hang or a protocol error."""
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(proxy.dsn(), sslmode="require", connect_timeout=10)


def test_ssl_request_answered_n_raw(proxy: Proxy) -> None:
    """The raw exchange: 8-byte SSLRequest → b'N', then a StartupMessage on the same socket works."""
    with RawClient(proxy.port) as client:
        client.send(wire.ssl_request())
        assert client.recv_raw(1) == b"N"
        messages = client.login()
        assert messages[-1][:2] == (wire.READY, bytes((wire.TXN_IDLE,)))


def test_gssenc_request_answered_n(proxy: Proxy) -> None:
    """GSSENCRequest gets b'N'; then SSLRequest and a StartupMessage still work, as libpq would send them."""
    with RawClient(proxy.port) as client:
        client.send(struct.pack("!ii", 8, wire.GSSENC_REQUEST_CODE))
        assert client.recv_raw(1) == b"N"
        client.send(wire.ssl_request())
        assert client.recv_raw(1) == b"N"
        messages = client.login(application_name="after-gss")
        assert [m[0] for m in messages if m[0] == wire.AUTH] == [wire.AUTH]
        assert client.backend_pid > 0
        rows = [m for m in client.query("select current_setting('application_name')") if m[0] == wire.DATA_ROW]
        assert b"after-gss" in rows[0][1]


def test_protocol_3_2_is_negotiated_down(proxy: Proxy) -> None:
    """A 3.2 StartupMessage reaches the server, whose NegotiateProtocolVersion ('v') reaches the client."""
    with RawClient(proxy.port) as client:
        messages = client.login(version=(3 << 16) | 2)
        kinds = [chr(m[0]) for m in messages]
        assert kinds[0] == "v", kinds
        newest, count = struct.unpack_from("!ii", messages[0][1])
        assert (newest, count) == (wire.PROTOCOL_3, 0)  # 3.0 is this server's newest
        assert "R" in kinds and kinds[-1] == "Z"
        assert not errors(client.query("select 1"))


def test_unknown_protocol_option_is_reported(proxy: Proxy) -> None:
    """A `_pq_.` option the server does not know is listed back in NegotiateProtocolVersion."""
    with RawClient(proxy.port) as client:
        messages = client.login(**{"_pq_.fd_test_option": "on"})
        assert messages[0][0] == wire.NEGOTIATE_VERSION
        body = messages[0][1]
        newest, count = struct.unpack_from("!ii", body)
        assert newest == wire.PROTOCOL_3 and count == 1
        assert body[8:].rstrip(b"\0") == b"_pq_.fd_test_option"
        assert messages[-1][0] == wire.READY


def test_libpq_max_protocol_version_negotiation(proxy: Proxy) -> None:
    """libpq asking for 3.2 (max_protocol_version) settles on 3.0 with this server, through the proxy."""
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 has no max_protocol_version")
    with psycopg.connect(proxy.dsn(), max_protocol_version="3.2") as conn:
        assert conn.info.pgconn.protocol_version == 3
        assert conn.execute("select 1").fetchone() == (1,)


def test_startup_packet_split_byte_by_byte(proxy: Proxy) -> None:
    """A StartupMessage trickling in one byte per segment is reassembled before anything is decided."""
    packet = wire.ssl_request() + wire.startup_message(
        {"user": "postgres", "database": "postgres", "application_name": "trickle"}
    )
    with RawClient(proxy.port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(8):
            client.send(packet[i : i + 1])
        assert client.recv_raw(1) == b"N"
        for i in range(8, len(packet)):
            client.send(packet[i : i + 1])
        assert client.until("Z")[-1][0] == wire.READY
        assert not errors(client.query("select 1"))


def test_startup_and_query_in_one_segment(proxy: Proxy) -> None:
    """Bytes sent before the upstream is connected (StartupMessage and a Query together) are kept, in order."""
    with RawClient(proxy.port) as client:
        client.send(
            wire.ssl_request()
            + wire.startup_message({"user": "postgres", "database": "postgres"})
            + wire.message("Q", b"select 'early bird'\0")
        )
        assert client.recv_raw(1) == b"N"
        client.until("Z")  # login
        replies = client.until("Z")  # the early query
        rows = [body for typ, body, _ in replies if typ == wire.DATA_ROW]
        assert len(rows) == 1 and rows[0].endswith(b"early bird")
