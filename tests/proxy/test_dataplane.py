"""The compiled data plane against the Python one: the same traffic gives the same events.

Two proxies in front of the same database, one with ``--data-plane python`` and one with ``native``, see
the same conversations from real drivers (psycopg 3, asyncpg, psql, pgbench); their streams must hold
the same events, apart from what differs by nature (times, session ids, backend pids). Below that,
hypothesis feeds the same byte streams, cut at random places, to the native framer and to wire.py's.

The through-proxy tests run on the native path, the default; ``FASTERDATA_DATA_PLANE=python`` in the
environment (every test proxy reads it as its ``data_plane`` setting) runs them on the reference, as
.ci/run does for tests/proxy and tests/e2e.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import os
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from fasterdata.proxy import dataplane, wire
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED
from fasterdata.proxy.stats import ProxyStats
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.certs import TestPKI
from tests.kit.metrics import metric
from tests.kit.pgbench import pgbench
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.rawclient import RawClient, errors
from tests.kit.services import PG_USER, REDIS_URL, direct_dsn
from tests.kit.streams import stream_events
from tests.proxy.pxkit import tool_env

pytestmark = pytest.mark.skipif(not dataplane.available(), reason="proxy._dataplane not built (no C compiler)")

# Fields that differ between two runs of the same conversation.
VARYING = frozenset(("ts", "dur_us", "sid", "client", "pid"))


# -- the framer alone ------------------------------------------------------------------------------

_TYPES = sorted({ord(c) for c in FRONTEND_WANTED + BACKEND_WANTED} | {ord(c) for c in "DdpWTA"})


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int], int, int]:
    """Messages (some longer than keep), maybe a bad header at the end, and where to cut the bytes."""
    keep = draw(st.sampled_from([0, 1, 7, 64, 1 << 20]))
    max_message = draw(st.sampled_from([1024, wire.DEFAULT_MAX_MESSAGE]))
    parts = []
    for typ, size in draw(st.lists(st.tuples(st.sampled_from(_TYPES), st.integers(0, 300)), max_size=25)):
        parts.append(bytes([typ]) + struct.pack("!i", size + 4) + draw(st.binary(min_size=size, max_size=size)))
    tail = draw(st.sampled_from(["", "short", "negative", "huge"]))
    if tail:
        length = {"short": draw(st.integers(0, 3)), "negative": -5, "huge": max_message + 1}[tail]
        parts.append(bytes([draw(st.sampled_from(_TYPES))]) + struct.pack("!i", length) + b"rest")
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return data, cuts, keep, max_message


def python_framer(chunks: list[bytes], wanted: str, max_message: int, keep: int) -> list:
    decoder = wire.BackendDecoder(wanted, max_message, keep)
    out: list = []
    for chunk in chunks:
        try:
            out.extend(decoder.feed(chunk))
        except wire.ProtocolViolation as exc:
            out.append(("violation", str(exc)))
            break
    return out


def native_framer(chunks: list[bytes], wanted: str, max_message: int, keep: int) -> list:
    out = dataplane.native_frame(chunks, dataplane.wanted_table(wanted), max_message, keep)
    if out and out[-1][0] == "violation":
        _, typ, length, what = out[-1]
        out[-1] = ("violation", dataplane.violation_text(typ, length, what, max_message))
    return out


@given(streams(), st.sampled_from([FRONTEND_WANTED, BACKEND_WANTED, ""]))
def test_native_framer_matches_wire(stream: tuple[bytes, list[int], int, int], wanted: str) -> None:
    data, cuts, keep, max_message = stream
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert native_framer(chunks, wanted, max_message, keep) == python_framer(chunks, wanted, max_message, keep)


# -- the loop alone, on socket pairs -------------------------------------------------------------


class Pair:
    """A Loop session between two socket pairs: ``client`` and ``server`` are the far ends."""

    def __init__(self, loop: object) -> None:
        self.client, near_client = socket.socketpair()
        near_server, self.server = socket.socketpair()
        for sock in (self.client, self.server):
            sock.settimeout(10)
        self.handle = loop.add(os.dup(near_client.fileno()), os.dup(near_server.fileno()),  # type: ignore[attr-defined]
                               dataplane.wanted_table(FRONTEND_WANTED), dataplane.wanted_table(BACKEND_WANTED),
                               wire.DEFAULT_MAX_MESSAGE, wire.DEFAULT_MAX_MESSAGE, wire.DEFAULT_KEEP, True)
        near_client.close()
        near_server.close()


def receive(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size and (chunk := sock.recv(size - len(got))):
        got += chunk
    return got


def drained(loop: object, until: int) -> list:
    """Records, waiting on the loop's eventfd, until ``until`` have come (bounded by the deadline)."""
    records: list = []
    deadline = time.monotonic() + 10
    while len(records) < until and time.monotonic() < deadline:
        select.select([loop.fileno()], [], [], 0.1)  # type: ignore[attr-defined]
        records += loop.drain()[0]  # type: ignore[attr-defined]
    return records


def test_loop_forwards_first_then_records_what_capture_needs() -> None:
    loop = dataplane.Loop()
    try:
        pair = Pair(loop)
        query = wire.message("Q", b"SELECT 1\0")
        pair.client.sendall(query + wire.message("X"))  # Terminate is forwarded, not recorded
        assert receive(pair.server, len(query) + 5) == query + wire.message("X")
        ready = wire.message("C", b"SELECT 1\0") + wire.message("Z", b"I")
        pair.server.sendall(ready)
        assert receive(pair.client, len(ready)) == ready
        pair.client.close()
        records = drained(loop, 3)
        assert [(kind, side, payload) for kind, _h, side, _ts, payload in records] == [
            (dataplane.MESSAGES, dataplane.CLIENT_SIDE, [(wire.QUERY, b"SELECT 1\0", 9)]),
            (dataplane.MESSAGES, dataplane.SERVER_SIDE,
             [(wire.COMMAND_COMPLETE, b"SELECT 1\0", 9), (wire.READY, b"I", 1)]),
            (dataplane.END, dataplane.CLIENT_SIDE, 0),  # reason 0: the client hung up
        ]
        assert {h for _k, h, _s, _t, _p in records} == {pair.handle}
        assert records[0][3] <= records[1][3] <= records[2][3]  # read times, in order
        assert receive(pair.server, 1) == b""  # the server's side was closed after it
    finally:
        loop.stop()


def test_what_python_writes_reaches_the_peer_though_the_loop_stops_at_once() -> None:
    """Shutdown: the error that tells a client why it is cut off, then close and stop in one breath."""
    loop = dataplane.Loop()
    pair = Pair(loop)
    error = wire.error_response("terminating connection: shutting down", "57P01")
    loop.write(pair.handle, dataplane.CLIENT_SIDE, error)
    loop.write(pair.handle, dataplane.SERVER_SIDE, wire.message("X"))
    loop.close(pair.handle)
    loop.stop()
    assert receive(pair.client, len(error) + 1) == error  # then end of stream
    assert receive(pair.server, 6) == wire.message("X")


def test_loop_stops_a_session_capture_rather_than_growing_without_bound() -> None:
    """Python never drains: past ``pace`` the loop waits a while, past ``max_buffer`` the session's capture
    stops (a LOST record), and its bytes keep flowing."""
    loop = dataplane.Loop(max_buffer=4096, pace=4096)
    try:
        pair = Pair(loop)
        burst = wire.message("Q", b"SELECT 1 -- " + b"x" * 200 + b"\0") * 40
        for _ in range(3):
            pair.client.sendall(burst)
            assert receive(pair.server, len(burst)) == burst
        records = drained(loop, 2)
        kinds = [kind for kind, *_ in records]
        assert kinds[0] == dataplane.MESSAGES and dataplane.LOST in kinds
        assert kinds.count(dataplane.MESSAGES) < 3  # what came after LOST was not recorded
    finally:
        loop.stop()


def a_conversation(pair: Pair) -> None:
    """Parse/Bind/Execute/Sync and its answers, then a failing simple Query, through the loop."""
    client = (wire.message("P", b"s1\0SELECT $1::int\0\0\x01\0\0\0\x17")
              + wire.message("B", b"\0s1\0\0\0\0\x01\0\0\0\x0242\0\0") + wire.message("E", b"\0\0\0\0\0")
              + wire.message("S"))
    pair.client.sendall(client)
    assert receive(pair.server, len(client)) == client
    server = (wire.message("1") + wire.message("2") + wire.message("D", b"\0\x01\0\0\0\x0242")
              + wire.message("C", b"SELECT 1\0") + wire.message("Z", b"I"))
    pair.server.sendall(server)
    assert receive(pair.client, len(server)) == server
    query = wire.message("Q", b"SELECT 1/0\0")
    pair.client.sendall(query)
    assert receive(pair.server, len(query)) == query
    answer = wire.error_response("division by zero", "22012") + wire.message("Z", b"I")
    pair.server.sendall(answer)
    assert receive(pair.client, len(answer)) == answer


def delivered(loop: object, taps: dict) -> tuple[list, list]:
    """Loop.deliver until the session's END came back in Python form; its records and failures."""
    records: list = []
    failed: list = []
    deadline = time.monotonic() + 10
    while dataplane.END not in [kind for kind, *_ in records] and time.monotonic() < deadline:
        select.select([loop.fileno()], [], [], 0.1)  # type: ignore[attr-defined]
        rest, bad, *_ = loop.deliver(taps)  # type: ignore[attr-defined]
        records += rest
        failed += bad
    return records, failed


compiled_session = pytest.mark.skipif(dataplane.CompiledSession is None, reason="proxy._session not built")


@compiled_session
def test_deliver_feeds_a_compiled_session_what_drain_would_hand_it() -> None:
    """The same conversation, once drained as tuples into one compiled Session and once delivered by the
    loop into another: the same events; deliver hands back only the records of untapped handles."""
    events: dict[str, list] = {"drained": [], "delivered": []}
    loop = dataplane.Loop()
    try:
        for how in ("drained", "delivered"):
            session = dataplane.CompiledSession("t", "c", {"user": "u"}, emit=events[how].append)
            session.resume(7)
            pair = Pair(loop)
            a_conversation(pair)
            pair.client.close()
            if how == "drained":
                for kind, _h, side, ts, payload in drained(loop, 5):
                    if kind == dataplane.MESSAGES:
                        (session.from_client if side == dataplane.CLIENT_SIDE else session.from_server)(payload, ts)
            else:
                records, failed = delivered(loop, {pair.handle: session})
                assert [kind for kind, *_ in records] == [dataplane.END] and failed == []
            session.close(0)
    finally:
        loop.stop()
    drop_times = [{k: v for k, v in e.items() if k not in ("ts", "dur_us", "sid")} for e in events["drained"]]
    assert [e["sql"] for e in events["drained"]] == ["SELECT $1::int", "SELECT 1/0"]
    assert drop_times == [{k: v for k, v in e.items() if k not in ("ts", "dur_us", "sid")}
                          for e in events["delivered"]]


@compiled_session
def test_a_session_that_raises_in_deliver_is_reported_and_left_out() -> None:
    """deliver returns (handle, exception) for it, with the traceback, and takes it out of taps."""
    def emit(_event: dict) -> None:
        raise RuntimeError("sink on fire")

    loop = dataplane.Loop()
    try:
        session = dataplane.CompiledSession("t", "c", {"user": "u"}, emit=emit)
        session.resume(7)
        pair = Pair(loop)
        taps = {pair.handle: session}
        a_conversation(pair)
        pair.client.close()
        records, failed = delivered(loop, taps)
    finally:
        loop.stop()
    assert [(h, type(e), str(e)) for h, e in failed] == [(pair.handle, RuntimeError, "sink on fire")]
    assert failed[0][1].__traceback__ is not None and taps == {}
    # what came after the failure is handed back as records, for Python to find the session gone
    kinds = [kind for kind, *_ in records]
    assert kinds[-1] == dataplane.END and kinds[:-1] and set(kinds[:-1]) == {dataplane.MESSAGES}


class GcWatch:
    """A session's Tap as drain() sees it: notes whether the cyclic collector ran enabled meanwhile."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[bool] = []
        self.failed = 0
        self.draining = False
        self.session = self

    def from_client(self, _messages: list, _ts: int) -> None:
        self.seen.append(gc.isenabled())
        if self.fail:
            raise ValueError("a decoding bug")

    from_server = from_client

    def tap_failed(self) -> None:
        self.failed += 1


@pytest.mark.parametrize("fail", [False, True], ids=["delivered", "a-session-raises"])
def test_drain_pauses_the_cyclic_collector_and_always_resumes_it(fail: bool) -> None:
    plane = dataplane.DataPlane(ProxyStats(), wire.DEFAULT_MAX_MESSAGE, 1 << 20)
    plane.loop = dataplane.Loop()
    try:
        pair = Pair(plane.loop)
        watch = plane.sessions[pair.handle] = GcWatch(fail)
        query = wire.message("Q", b"SELECT 1\0")
        pair.client.sendall(query)
        assert receive(pair.server, len(query)) == query
        wait_until(lambda: select.select([plane.loop.fileno()], [], [], 0.1)[0], what="a record to drain")
        assert gc.isenabled()
        plane.drain()
        assert watch.seen == [False]  # the record was delivered with the collector paused
        assert watch.failed == int(fail)
        assert gc.isenabled()
        gc.disable()  # paused by the caller: drain() leaves it paused
        try:
            other = Pair(plane.loop)  # the first session's capture stopped if it raised
            plane.sessions[other.handle] = GcWatch()
            other.client.sendall(query)
            assert receive(other.server, len(query)) == query
            wait_until(lambda: select.select([plane.loop.fileno()], [], [], 0.1)[0], what="a record to drain")
            plane.drain()
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        plane.loop.stop()


# -- real drivers through both paths ---------------------------------------------------------------


def comparable(events: list[dict[str, str]]) -> list[tuple[tuple[tuple[str, str], ...], ...]]:
    """Each session's events without their varying fields, sessions in any order (pgbench -c 2 interleaves).

    Prepared statement names are numbered per session in order of appearance: asyncpg counts its
    statements per process, so the second run's names are higher.
    """
    by_sid: dict[str, list[dict[str, str]]] = {}
    for e in events:
        by_sid.setdefault(e["sid"], []).append(e)
    per_session = []
    for evs in by_sid.values():
        names: dict[str, str] = {}
        rows = []
        for e in evs:
            e = {k: v for k, v in e.items() if k not in VARYING}
            if "stmt" in e:
                e["stmt"] = names.setdefault(e["stmt"], f"statement {len(names) + 1}")
            rows.append(tuple(sorted(e.items())))
        per_session.append(tuple(rows))
    return sorted(per_session)


def with_psycopg(port: int, db: str) -> None:
    dsn = f"host=127.0.0.1 port={port} user={PG_USER} dbname={db}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text, password text)")
        c.execute("INSERT INTO t VALUES (%s, %s, %s)", (1, "one", "hunter2"))
        c.cursor().executemany("INSERT INTO t VALUES (%s, %s, %s)", [(i, f"v{i}", "pw") for i in range(2, 12)])
        c.execute("SELECT 1; SELECT pg_sleep(0.01); SELECT 2")
        with c.transaction():
            c.execute("UPDATE t SET v = %s WHERE id = %s", ("uno", 1))
            with c.transaction():  # a savepoint
                c.execute("DELETE FROM t WHERE id = 2")
                c.execute("SAVEPOINT inner_sp")
                c.execute("ROLLBACK TO SAVEPOINT inner_sp")
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1 / %s", (0,))
        with pytest.raises(psycopg.errors.UniqueViolation), c.transaction():
            c.execute("INSERT INTO t VALUES (1, 'again', 'x')")
        with c.pipeline():
            for i in range(5):
                c.execute("SELECT v FROM t WHERE id = %s", (i,))
        c.execute("SELECT %s::int", (7,), prepare=True)
        c.execute("SELECT %s::int", (8,), prepare=True)
        with c.cursor().copy("COPY t (id, v, password) FROM STDIN") as copy:
            for i in range(100, 120):
                copy.write_row((i, f"c{i}", "s"))
        with c.cursor().copy("COPY t TO STDOUT") as copy:
            assert sum(1 for _ in copy) > 0
        with c.transaction(), c.cursor(name="portal") as cur:
            cur.itersize = 7
            assert len(list(cur.execute("SELECT * FROM generate_series(1, 30)"))) == 30
        big = "x" * (2 << 20)  # longer than the framer keeps
        assert c.execute("SELECT length(%s::text)", (big,)).fetchone() == (len(big),)


def with_asyncpg(port: int, db: str) -> None:
    async def run() -> None:
        c = await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER, database=db)
        try:
            await c.execute("CREATE TEMP TABLE a (id int, v text)")
            await c.executemany("INSERT INTO a VALUES ($1, $2)", [(i, str(i)) for i in range(20)])
            st_ = await c.prepare("SELECT v FROM a WHERE id = $1")
            for i in range(5):
                await st_.fetchval(i)
            async with c.transaction():
                n = 0
                async for _row in c.cursor("SELECT * FROM a", prefetch=6):
                    n += 1
                assert n == 20
            with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                await c.fetch("SELECT * FROM missing_table")
            await c.fetchval("SELECT $1::text", "after the error")
        finally:
            await c.close()

    asyncio.run(run())


def with_psql(port: int, db: str) -> None:
    script = ("BEGIN;\nCREATE TEMP TABLE p (x int);\nINSERT INTO p SELECT generate_series(1, 50);\n"
              "SELECT count(*) FROM p; SELECT sum(x) FROM p;\nCOMMIT;\n\\copy (SELECT 1) TO '/dev/null'\n")
    done = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script, env=tool_env(db, port),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def with_pgbench(port: int, db: str, script: Path) -> None:
    for mode in ("simple", "prepared"):
        pgbench(port, db, "pgb-" + mode, "-n", "-c", "2", "-t", "25", "-M", mode, "-f", str(script))


def run_all(port: int, db: str, script: Path) -> None:
    with_psycopg(port, db)
    with_asyncpg(port, db)
    with_psql(port, db)
    with_pgbench(port, db, script)


def settled(proxy: ProxyProcess) -> list[dict[str, str]]:
    """The proxy's whole stream once it has stopped (its sink flushes before it exits)."""
    assert proxy.stop() == 0, proxy.log()
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return stream_events(r, stream_name(proxy.prefix))
    finally:
        r.close()


def moved(proxy: ProxyProcess) -> int:
    return proxy.log().count("session moved to the native data plane")


def test_drivers_give_the_same_events_on_both_paths(start_proxy: StartProxy, bench_db: str,
                                                     tmp_path: Path) -> None:
    script = tmp_path / "fixed.sql"  # fixed values, so both runs send the same statements
    script.write_text("BEGIN;\nSELECT abalance FROM pgbench_accounts WHERE aid = 1;\n"
                      "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1;\nEND;\n")
    flags = ("--upstream-sslmode", "disable", "--log-level", "debug")
    python = start_proxy("--data-plane", "python", *flags)
    native = start_proxy("--data-plane", "native", *flags)
    assert "data plane native" in native.log() and "data plane python" in python.log()
    run_all(python.port, bench_db, script)
    run_all(native.port, bench_db, script)
    # every session but psql's \copy-free ones of each driver moved: psycopg, asyncpg, psql, 4 pgbench
    assert moved(native) >= 7, native.log()
    assert moved(python) == 0
    want, got = settled(python), settled(native)
    assert len(got) == len(want) > 200
    assert comparable(got) == comparable(want)


# -- guarantees on the native path ------------------------------------------------------------------


def test_malformed_input_ends_that_session_alone(start_proxy: StartProxy) -> None:
    native = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug")
    python = start_proxy("--data-plane", "python", "--upstream-sslmode", "disable")
    told = {}
    for name, proxy in (("python", python), ("native", native)):
        with RawClient(proxy.port) as bystander, RawClient(proxy.port) as bad:
            bystander.login()
            bad.login()
            wait_until(lambda proxy=proxy: proxy is python or moved(proxy) >= 2, "both sessions moved",
                       timeout=10)
            bad.send(b"Q" + struct.pack("!i", 2))
            told[name] = errors(bad.rest())
            assert bad.eof
            assert errors(bystander.query("SELECT 42")) == []
    assert [e["C"] for e in told["native"]] == ["08P01"]
    assert told["native"] == told["python"]


def test_bytes_are_untouched_under_backpressure(start_proxy: StartProxy) -> None:
    """A client that stops reading for a while: the server's rows wait (the proxy stops reading it), then
    arrive whole and in order."""
    native = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug")
    n = 600_000  # rows of 43 bytes: far more than the socket buffers on the way hold
    with RawClient(native.port, timeout=30) as c, psycopg.connect(direct_dsn("postgres"), autocommit=True) as pg:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.login()
        wait_until(lambda: moved(native) >= 1, "the session moved", timeout=10)
        c.send(wire.message("Q", f"SELECT md5(i::text) FROM generate_series(1, {n}) i".encode() + b"\0"))
        # not reading: once the buffers are full the proxy stops reading the server, which then waits
        wait_until(lambda: pg.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                                      (c.backend_pid,)).fetchone() == ("ClientWrite",),
                   "the backend waiting to write", timeout=20)
        time.sleep(0.2)
        values = [m[1][6:] for m in c.until("Z") if m[0] == wire.DATA_ROW]
    assert values == [hashlib.md5(str(i).encode()).hexdigest().encode() for i in range(1, n + 1)]


def test_shutdown_waits_for_a_busy_native_session(start_proxy: StartProxy) -> None:
    """SIGTERM during an open transaction on the native path: it may finish within the grace, then the
    session is ended and the proxy exits 0."""
    native = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug",
                         "--shutdown-grace", "20")
    stopped: list[int] = []
    with psycopg.connect(f"host=127.0.0.1 port={native.port} user={PG_USER} dbname=postgres",
                         autocommit=True) as c:
        wait_until(lambda: moved(native) >= 1, "the session moved", timeout=10)
        c.execute("BEGIN")
        stopper = threading.Thread(target=lambda: stopped.append(native.stop()))
        stopper.start()
        wait_until(lambda: "shutting down: 1 sessions open" in native.log(), "the shutdown began", timeout=10)
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.execute("COMMIT")
        stopper.join(30)
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT 2")
    assert stopped == [0], native.log()


def test_the_metrics_count_the_moved_sessions(start_proxy: StartProxy) -> None:
    native = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable")
    with psycopg.connect(native.dsn(sslmode="disable")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        wait_until(lambda: metric(native.metrics_port, "fasterdata_proxy_native_sessions") == 1,
                   "the session counted as native", timeout=10)
    wait_until(lambda: metric(native.metrics_port, "fasterdata_proxy_native_sessions") == 0,
               "the session ended", timeout=10)
    assert metric(native.metrics_port, "fasterdata_proxy_native_sessions_moved_total") == 1
    assert metric(native.metrics_port, "fasterdata_proxy_native_capture_lost_total") == 0


def test_tls_sessions_stay_on_the_python_path(start_proxy: StartProxy, tmp_path: Path) -> None:
    cert, key = TestPKI(tmp_path / "pki").issue("proxy")
    native = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug",
                         "--tls-cert", str(cert), "--tls-key", str(key))
    with psycopg.connect(native.dsn(sslmode="require")) as encrypted, \
            psycopg.connect(native.dsn(sslmode="disable")) as plain:
        assert encrypted.execute("SELECT 1").fetchone() == (1,)
        assert plain.execute("SELECT 2").fetchone() == (2,)
        wait_until(lambda: "stays on the Python data plane: TLS" in native.log() and moved(native) == 1,
                   lambda: f"one session kept, one moved:\n{native.log()}", timeout=10)
        assert encrypted.execute("SELECT 3").fetchone() == (3,)


def test_without_the_extension_native_runs_on_the_python_path(start_proxy: StartProxy, tmp_path: Path) -> None:
    """An install without a C compiler has no proxy._dataplane: native, the default (named here, as the
    environment may choose otherwise), still serves, on the reference path, and says so. The proxy
    process is made to find no extension by a sitecustomize."""
    shim = tmp_path / "no-extension"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['fasterdata.proxy._dataplane'] = None\n")
    proxy = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug",
                        env={"PYTHONPATH": str(shim)})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        assert c.execute("SELECT 41 + 1").fetchone() == (42,)
    log = proxy.log()
    assert "data_plane is native, but proxy._dataplane was not built" in log
    assert "data plane python" in log and moved(proxy) == 0
    events = settled(proxy)
    assert any(e.get("sql") == "SELECT 41 + 1" for e in events), events


def test_without_the_compiled_capture_the_native_plane_captures_in_python(start_proxy: StartProxy,
                                                                          tmp_path: Path) -> None:
    """An install whose compiled Session, parameter encoder and counters are missing (each is optional on
    its own) still moves sessions to the native loop, captures them with the Python ones, and says so."""
    shim = tmp_path / "no-compiled-capture"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\nfor name in ('_session', '_params', '_capture'):\n"
        "    sys.modules['fasterdata.proxy.' + name] = None\n")
    proxy = start_proxy("--data-plane", "native", "--upstream-sslmode", "disable", "--log-level", "debug",
                        env={"PYTHONPATH": str(shim)})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        assert c.execute("SELECT %s::int + 1", (41,), prepare=True).fetchone() == (42,)
    assert "data plane native (capture in Python (proxy._session not built)" in proxy.log()
    wait_until(lambda: moved(proxy) == 1, lambda: proxy.log(), timeout=10)
    events = settled(proxy)
    assert any(e.get("sql") == "SELECT $1::int + 1" and e.get("params") == "[41]" for e in events), events


def test_the_environment_chooses_the_path_for_the_through_proxy_tests() -> None:
    """FASTERDATA_DATA_PLANE=python makes every test proxy run the reference path (see the module docstring)."""
    from fasterdata.config.settings import load

    assert load("proxy", environ={"FASTERDATA_DATA_PLANE": "python"}).data_plane == "python"
    assert load("proxy", environ={}).data_plane == "native"

