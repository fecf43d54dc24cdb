"""Connecting the way operators configure Redis: password, ACL user, DB number, TLS (rediss://)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from fasterdata.proxy.sink import StreamSink
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.certs import server_and_client
from tests.kit.polling import until
from tests.kit.redisserver import RedisServer, tls_supported
from tests.kit.streams import stream_events

from .kit import events

FAST = {"backoff_min": 0.02, "backoff_max": 0.2, "connect_timeout": 2.0}


async def send(sink: StreamSink, count: int = 200) -> None:
    await sink.start()
    for fields in events(count):
        sink.put(fields)
    await until(lambda: sink.sent == count, "events sent")
    await sink.close(5)


async def test_password_and_db_number(redis_server, prefix: str) -> None:
    server: RedisServer = redis_server("--requirepass", "s3cr:et@/x")
    sink = StreamSink(f"redis://:s3cr%3Aet%40%2Fx@127.0.0.1:{server.port}/3", prefix, **FAST)
    await send(sink)
    admin = server.client(password="s3cr:et@/x", db=3)
    assert stream_events(admin, stream_name(prefix)) == events(200)
    assert server.client(password="s3cr:et@/x", db=0).exists(stream_name(prefix)) == 0


async def test_wrong_password_is_reported_and_events_are_kept(redis_server, prefix: str, tmp_path: Path) -> None:
    server: RedisServer = redis_server("--requirepass", "right")
    sink = StreamSink(f"redis://:wrong@127.0.0.1:{server.port}/0", prefix, spool_path=tmp_path / "spool", **FAST)
    await sink.start()
    await until(lambda: sink.lanes[0].health.down_since is not None, "the failed login")
    assert "AUTH failed" in sink.lanes[0].health.down_reason
    assert "wrong" not in sink.target.display and "***" in sink.target.display  # no password in logs
    for fields in events(50):
        sink.put(fields)
    await sink.close(1)
    assert (sink.sent, sink.spooled, sink.dropped) == (0, 50, 0)


async def test_acl_user(redis_server, prefix: str) -> None:
    server: RedisServer = redis_server("--user", "default", "off",
                                       "--user", "alice", "on", ">alicepw", f"~{prefix}:*", "+@all")
    sink = StreamSink(f"redis://alice:alicepw@127.0.0.1:{server.port}/0", prefix, **FAST)
    await send(sink)
    admin = server.client(username="alice", password="alicepw")
    assert stream_events(admin, stream_name(prefix)) == events(200)
    # the same user may not write outside its key pattern: the sink reports it and keeps the events
    other = StreamSink(f"redis://alice:alicepw@127.0.0.1:{server.port}/0", "elsewhere", **FAST)
    await other.start()
    other.put({"a": "b"})
    await until(lambda: other.send_errors > 0, "the refused batch")
    assert "NOPERM" in other.lanes[0].health.down_reason
    assert other.queued == 1 and other.sent == 0
    await other.close(0.5)
    assert other.dropped == 1  # no spool configured: counted, not silently lost


async def test_a_user_who_may_only_write_the_stream_still_counts_what_its_cap_trims(redis_server,
                                                                                    prefix: str) -> None:
    """XINFO, the per-group tally (`<stream>:trimmed`) or the statement count (`<stream>:held`) refused by an
    ACL must not stop the statements. Without the count, the cap counts each entry as one statement."""
    stream = stream_name(prefix)
    server: RedisServer = redis_server("--user", "default", "off", "--user", "bob", "on", ">bobpw", f"~{stream}",
                                       f"~{prefix}:sink:*", "+@all")
    bob = server.client(username="bob", password="bobpw")
    bob.xgroup_create(stream, "analyzers", id="0", mkstream=True)
    sink = StreamSink(f"redis://bob:bobpw@127.0.0.1:{server.port}/0", prefix, maxlen=100, batch_max=50,
                      entry="packed", **FAST)
    await send(sink, 1000)
    assert sink.send_errors == 0 and sink.dropped == 0
    assert sink.trimmed_unread == 1000 - bob.xlen(stream) > 0
    bob.delete(stream)
    bundled = StreamSink(f"redis://bob:bobpw@127.0.0.1:{server.port}/0", prefix, maxlen=100, batch_max=50, **FAST)
    await send(bundled, 1000)
    assert bundled.send_errors == 0 and bundled.dropped == 0
    kept = stream_events(bob, stream)
    assert kept == events(1000)[1000 - len(kept):] and len(kept) >= 100


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    reason = tls_supported()
    if reason:
        pytest.skip(f"TLS tests skipped: {reason}")
    return server_and_client(tmp_path_factory.mktemp("certs"))


async def test_tls_verified(redis_server, prefix: str, certs: dict[str, str]) -> None:
    server: RedisServer = redis_server(tls=certs)
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca']}"
    sink = StreamSink(url, prefix, **FAST)
    await send(sink)
    check = redis.Redis.from_url(url, decode_responses=True)
    assert stream_events(check, stream_name(prefix)) == events(200)


async def test_tls_client_certificate_and_acl(redis_server, prefix: str, certs: dict[str, str]) -> None:
    server: RedisServer = redis_server("--user", "bob", "on", ">bobpw", "~*", "+@all",
                                       tls={**certs, "auth": "yes"})
    url = (f"rediss://bob:bobpw@127.0.0.1:{server.port}/2?ssl_ca_certs={certs['ca']}"
           f"&ssl_certfile={certs['client_cert']}&ssl_keyfile={certs['client_key']}")
    sink = StreamSink(url, prefix, **FAST)
    await send(sink)
    check = redis.Redis.from_url(url, decode_responses=True)
    assert stream_events(check, stream_name(prefix)) == events(200)


async def test_tls_untrusted_server_is_refused(redis_server, prefix: str, certs: dict[str, str]) -> None:
    server: RedisServer = redis_server(tls=certs)
    sink = StreamSink(f"rediss://127.0.0.1:{server.port}/0", prefix, **FAST)  # system CAs only
    await sink.start()
    await until(lambda: sink.lanes[0].health.down_since is not None, "the failed handshake")
    reason = sink.lanes[0].health.down_reason
    assert "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason
    assert not sink.connected
    await sink.close(0.5)
