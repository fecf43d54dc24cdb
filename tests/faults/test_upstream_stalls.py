"""The upstream answering slowly: a SIGSTOPped backend or postmaster of a private PostgreSQL.

A stopped process keeps its sockets open and the kernel keeps accepting bytes and even new TCP connections
for it, so nothing fails: everything just waits. These tests check that only the stalled session waits,
that the proxy's own bounds (connect_timeout, shutdown_grace) turn a stall into a clear error, and that
nothing leaks. Every SIGSTOP is undone in a ``finally``; the machine's PostgreSQL is never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import asyncpg
import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fasterdata.proxy import wire
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.metrics import http, metric
from tests.kit.pgcluster import PrivateCluster
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.procfs import fd_count
from tests.kit.rawclient import RawClient, errors
from tests.kit.services import REDIS_URL
from tests.kit.streams import stream_events

BOUND = 30.0  # seconds: only turns a hang into a failure
LOCK_KEY = 8_317_001  # advisory lock a stalled session waits on, so its statement cannot end by itself
OTHERS = "bcde"  # the sessions that must not notice session A's stall
PER_SESSION = 50  # statements each of them runs during the stall (200 in all)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a server process for the duration of the block; SIGCONT whatever happens.

    The block starts once the process is stopped, not when the signal was sent: a SIGINT that arrived
    while the SIGSTOP was still pending would be handled first (the lower number goes first), and the
    cancel the tests wait for would never show as pending."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(pid) == "T", f"process {pid} to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def process_state(pid: int) -> str:
    """The state letter /proc/<pid>/stat gives (R, S, D, T …); the name before it may hold spaces."""
    stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    return stat[stat.rindex(")") + 2]


def sigint_pending(pid: int) -> bool:
    """True while a SIGINT (how PostgreSQL delivers a cancel) waits for the stopped process to run."""
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        name, _, value = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(value, 16) & (1 << (signal.SIGINT - 1)):
            return True
    return False


def bytes_from_clients(port: int) -> float:
    """fasterdata_proxy_bytes{direction="client_to_server"}: moves once the proxy has read a client's bytes."""
    status, _headers, text = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fasterdata_proxy_bytes_total" and sample.labels == {"direction": "client_to_server"}:
                return sample.value
    raise AssertionError("no fasterdata_proxy_bytes_total{direction=client_to_server} sample")


def captured(proxy: ProxyProcess, app_prefix: str) -> list[dict[str, str]]:
    """Statement events in the proxy's stream whose application_name starts with ``app_prefix``."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [ev for ev in stream_events(client, stream_name(proxy.prefix))
                if ev.get("kind") == "stmt" and ev.get("app", "").startswith(app_prefix)]
    finally:
        client.close()


def in_state(cluster: PrivateCluster, pid: int, condition: str) -> bool:
    """Backend ``pid`` is in pg_stat_activity and matches an SQL condition on it."""
    return bool(cluster.execute(f"select 1 from pg_stat_activity where pid = {int(pid)} and {condition}"))


def in_state_like(cluster: PrivateCluster, app_pattern: str) -> bool:
    """Some backend's application_name matches a LIKE pattern."""
    return bool(cluster.execute(
        f"select 1 from pg_stat_activity where application_name like '{app_pattern}'"))


def run_others(proxy: ProxyProcess, tag: str) -> None:
    """Sessions B..E (one thread each) run PER_SESSION statements and check every answer."""
    def session(name: str) -> None:
        with psycopg.connect(proxy.dsn(application_name=f"{tag}-{name}"), autocommit=True,
                             connect_timeout=10) as conn:
            for i in range(PER_SESSION):
                assert conn.execute("select %s::int as stall_other", [i]).fetchone() == (i,)

    with ThreadPoolExecutor(len(OTHERS)) as pool:
        for done in [pool.submit(session, name) for name in OTHERS]:
            done.result(timeout=BOUND)


@pytest.fixture
def lock_holder(cluster: PrivateCluster) -> Iterator[psycopg.Connection]:
    """A direct connection holding LOCK_KEY: a statement asking for it waits until the holder lets go."""
    with cluster.connect() as conn:
        conn.execute("select pg_advisory_lock(%s)", [LOCK_KEY])
        yield conn
        conn.execute("select pg_advisory_unlock_all()")


@pytest.mark.parametrize("when", ["mid-query", "idle"])
def test_stalled_backend_stalls_only_its_session(start_proxy: StartProxy, cluster: PrivateCluster,
                                                 lock_holder: psycopg.Connection, when: str) -> None:
    """Session A's backend stopped (inside a statement, or idle before A sends one): 200 statements of
    B..E complete and reach the stream, /metrics and /healthz answer, A's statement waits; after SIGCONT it
    completes and is captured with a duration that covers the stall."""
    tag = f"stall-{uuid.uuid4().hex[:6]}"
    proxy = start_proxy(upstream=cluster.address)
    sql = ("select pg_advisory_lock(8317001) is null as stall_a" if when == "mid-query"
           else "select false as stall_a")
    with psycopg.connect(proxy.dsn(application_name=f"{tag}-a"), autocommit=True, connect_timeout=10) as conn_a, \
            ThreadPoolExecutor(1) as pool:
        pid = conn_a.info.backend_pid
        running: Future | None = None
        if when == "mid-query":  # A waits for the lock; it can only get it once its backend runs again
            running = pool.submit(lambda: conn_a.execute(sql).fetchone())
            wait_until(lambda: in_state(cluster, pid, "wait_event_type = 'Lock'"), "A to wait for the lock")
        with stopped(pid):
            if running is None:  # idle: A's statement reaches the proxy while nobody can answer it
                before = bytes_from_clients(proxy.metrics_port)
                running = pool.submit(lambda: conn_a.execute(sql).fetchone())
                wait_until(lambda: bytes_from_clients(proxy.metrics_port) > before, "the proxy to read A's query")
            began = time.monotonic()  # A's statement was in the proxy's hands before this
            lock_holder.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])  # A could go on, were it running

            run_others(proxy, tag)
            wait_until(lambda: len(captured(proxy, f"{tag}-")) == len(OTHERS) * PER_SESSION,
                       "B..E's statements in the stream while A is stopped")
            assert http(f"http://127.0.0.1:{proxy.metrics_port}/healthz")[0] == 200
            assert metric(proxy.metrics_port, "fasterdata_proxy_connections_active") == 1
            assert not running.done(), "A's statement finished while its backend was stopped"
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))  # a stall long enough to tell from a query
            stall = time.monotonic() - began
        assert running.result(timeout=BOUND) == (False,)
        assert conn_a.execute("select 'A goes on'").fetchone() == ("A goes on",)

    mine = wait_until(lambda: [ev for ev in captured(proxy, f"{tag}-a") if "stall_a" in ev["sql"]],
                      "A's statement in the stream")
    assert len(mine) == 1 and "err" not in mine[0], mine
    assert int(mine[0]["dur_us"]) >= (stall - 0.05) * 1e6, (mine[0], stall)
    others = captured(proxy, f"{tag}-")
    assert not [ev for ev in others if "err" in ev], others
    assert "Traceback" not in proxy.log(), proxy.log()


def _assert_cancelled_while_stopped(proxy: ProxyProcess, pid: int, tag: str, running: Future | None) -> None:
    """Shared middle of the cancel tests: the cancel reached the stopped backend and nobody else noticed."""
    wait_until(lambda: sigint_pending(pid), "the cancel to reach the stopped backend")
    assert metric(proxy.metrics_port, "fasterdata_proxy_cancel_requests_total") == 1
    run_others(proxy, tag)
    if running is not None:
        assert not running.done(), "the cancelled statement ended while its backend was stopped"


def _assert_captured_cancel(proxy: ProxyProcess, tag: str) -> None:
    """The stream has A's statement once with 57014, and B..E's without an error."""
    mine = wait_until(lambda: [ev for ev in captured(proxy, f"{tag}-a") if "stall_cancel" in ev["sql"]],
                      "the cancelled statement in the stream")
    assert [ev.get("err") for ev in mine] == ["57014"], mine
    others = [ev for ev in captured(proxy, f"{tag}-") if ev.get("app") != f"{tag}-a"]
    assert len(others) == len(OTHERS) * PER_SESSION and not [ev for ev in others if "err" in ev]


def test_cancel_of_a_stalled_session_psycopg(start_proxy: StartProxy, cluster: PrivateCluster) -> None:
    """psycopg's cancel_safe() while A's backend is stopped mid-statement: the CancelRequest goes through the
    proxy and waits as a pending SIGINT; on SIGCONT the statement ends with 57014 and A is usable again."""
    tag = f"stall-{uuid.uuid4().hex[:6]}"
    proxy = start_proxy(upstream=cluster.address)
    with psycopg.connect(proxy.dsn(application_name=f"{tag}-a"), autocommit=True, connect_timeout=10) as conn_a, \
            ThreadPoolExecutor(1) as pool:
        pid = conn_a.info.backend_pid
        running = pool.submit(conn_a.execute, "select pg_sleep(30) as stall_cancel")
        wait_until(lambda: in_state(cluster, pid, "state = 'active' and query like '%stall_cancel%'"),
                   "A's statement to run")
        with stopped(pid):
            conn_a.cancel_safe(timeout=BOUND)
            _assert_cancelled_while_stopped(proxy, pid, tag, running)
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            running.result(timeout=BOUND / 2)  # well short of the 30 s sleep: the cancel did it
        assert info.value.sqlstate == "57014"
        assert conn_a.execute("select 'usable'").fetchone() == ("usable",)
    _assert_captured_cancel(proxy, tag)


async def test_cancel_of_a_stalled_session_asyncpg(start_proxy: StartProxy, cluster: PrivateCluster) -> None:
    """asyncpg's timeout fires while A's backend is stopped mid-statement: its CancelRequest goes through
    the proxy; after SIGCONT the statement ends with 57014 (seen in the stream) and the connection works."""
    tag = f"stall-{uuid.uuid4().hex[:6]}"
    proxy = start_proxy(upstream=cluster.address)
    conn = await asyncpg.connect(proxy.url(), server_settings={"application_name": f"{tag}-a"})
    try:
        pid = conn.get_server_pid()
        query = asyncio.ensure_future(conn.fetchval("select pg_sleep(30) as stall_cancel", timeout=2))
        await asyncio.to_thread(wait_until, lambda: in_state(
            cluster, pid, "state = 'active' and query like '%stall_cancel%'"), "A's statement to run")
        with stopped(pid):
            done, _ = await asyncio.wait([query], timeout=BOUND)
            assert query in done and isinstance(query.exception(), TimeoutError), query
            await asyncio.to_thread(_assert_cancelled_while_stopped, proxy, pid, tag, None)
        # asyncpg waits for the cancelled statement to end first: a lost cancel would block this for 30 s
        assert await asyncio.wait_for(conn.fetchval("select 42"), BOUND / 2) == 42
    finally:
        await conn.close()
    await asyncio.to_thread(_assert_captured_cancel, proxy, tag)


def _connect_error(proxy: ProxyProcess, app: str) -> str:
    """What a psycopg user sees connecting through the proxy; its own timeout is far beyond the proxy's."""
    try:
        psycopg.connect(proxy.dsn(application_name=app), connect_timeout=int(BOUND)).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    return "connected"


@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
def test_stalled_postmaster_gives_08001_after_connect_timeout(start_proxy: StartProxy, cluster: PrivateCluster,
                                                              sslmode: str) -> None:
    """Postmaster stopped: the kernel still accepts the proxy's connection, nobody answers. A new client gets
    the proxy's 08001 naming the upstream after --connect-timeout (with sslmode=prefer the SSLRequest goes
    unanswered, with disable the startup packet: that one used to hang until the client gave up), an
    established session keeps working, and new sessions work again after SIGCONT."""
    proxy = start_proxy("--no-capture", "--connect-timeout", "1", "--upstream-sslmode", sslmode,
                        upstream=cluster.address)
    postmaster = cluster.pid
    assert postmaster is not None
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as established:
        with stopped(postmaster):
            message = _connect_error(proxy, "stall-new")
            assert f"could not connect to upstream {cluster.address}: no answer" in message, message
            with RawClient(proxy.port, timeout=BOUND) as raw:  # libpq hides the SQLSTATE of a login failure
                raw.send(wire.startup_message({"user": "postgres", "database": "postgres"}))
                [error] = errors(raw.rest())
            assert error["C"] == "08001" and error["S"] == "FATAL", error
            assert established.execute("select count(*) > 0 from pg_class").fetchone() == (True,)
            assert http(f"http://127.0.0.1:{proxy.metrics_port}/healthz")[0] == 200
        wait_until(lambda: _connect_error(proxy, "stall-back") == "connected", "new sessions to work again")
        assert established.execute("select 'still here'").fetchone() == ("still here",)
    assert proxy.proc.poll() is None


@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
def test_connect_timeout_under_load(start_proxy: StartProxy, cluster: PrivateCluster, sslmode: str) -> None:
    """16 clients connect at once while the postmaster is stopped: each gets its error, and the proxy's
    descriptors, open sessions and the server's backends return to where they were (no leak)."""
    clients = 16
    tag = f"stall-load-{uuid.uuid4().hex[:6]}"
    proxy = start_proxy("--no-capture", "--connect-timeout", "1", "--upstream-sslmode", sslmode,
                        upstream=cluster.address)
    postmaster = cluster.pid
    assert postmaster is not None
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as established:
        baseline = fd_count(proxy.proc.pid)
        with stopped(postmaster):
            barrier = threading.Barrier(clients)

            def attempt(n: int) -> str:
                barrier.wait(BOUND)
                return _connect_error(proxy, f"{tag}-{n}")

            with ThreadPoolExecutor(clients) as pool:
                seen = list(pool.map(attempt, range(clients), timeout=2 * BOUND))
            assert all("could not connect to upstream" in m for m in seen), seen
            wait_until(lambda: fd_count(proxy.proc.pid) <= baseline, "the proxy's descriptors back to baseline")
            assert metric(proxy.metrics_port, "fasterdata_proxy_connections_active") == 1
            assert established.execute("select 1").fetchone() == (1,)
        # The postmaster now accepts what queued up meanwhile; none of it may become a lasting backend.
        wait_until(lambda: not in_state_like(cluster, f"{tag}-%"), "the queued connections to go away")
        wait_until(lambda: _connect_error(proxy, "stall-back") == "connected", "new sessions to work again")
    wait_until(lambda: fd_count(proxy.proc.pid) <= baseline - 2, "the proxy's descriptors after the last session")
    assert metric(proxy.metrics_port, "fasterdata_proxy_connections_active") == 0


def test_sigterm_with_a_stalled_session(start_proxy: StartProxy, cluster: PrivateCluster,
                                        lock_holder: psycopg.Connection) -> None:
    """SIGTERM while A's backend is stopped mid-statement: the proxy gives it --shutdown-grace, then ends it
    (A's client gets 57P01 instead of hanging) and exits 0; once resumed, the backend goes away too."""
    grace = 2.0
    proxy = start_proxy("--shutdown-grace", f"{grace:g}", upstream=cluster.address)
    with psycopg.connect(proxy.dsn(application_name="stall-term"), autocommit=True, connect_timeout=10) as conn, \
            ThreadPoolExecutor(1) as pool:
        pid = conn.info.backend_pid
        running = pool.submit(lambda: conn.execute("select pg_advisory_lock(8317001)").fetchone())
        wait_until(lambda: in_state(cluster, pid, "wait_event_type = 'Lock'"), "A to wait for the lock")
        with stopped(pid):
            lock_holder.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])
            asked = time.monotonic()
            proxy.proc.send_signal(signal.SIGTERM)
            code = proxy.proc.wait(timeout=BOUND)
            waited = time.monotonic() - asked
            error = running.exception(timeout=BOUND)
        assert code == 0, proxy.log()
        assert isinstance(error, psycopg.OperationalError) and error.sqlstate == "57P01", repr(error)
        assert "shutting down" in str(error)
        assert waited >= grace - 0.1, f"the stalled session was not given its grace ({waited:.2f}s)"
        assert "grace period over: closing 1 sessions" in proxy.log(), proxy.log()
    wait_until(lambda: not in_state(cluster, pid, "true"), "the resumed backend to notice and exit")
