"""`fasterdata proxy --workers 2`: forked processes sharing the listen port with SO_REUSEPORT.

The kernel spreads connections over the workers by a hash of the client's address and port, so a
CancelRequest (a new connection) often lands on a different worker than the session it cancels. Which
worker took a connection is read from the workers' own /metrics (worker i serves metrics on the metrics
port + i): the counter that moved. Real PostgreSQL, Redis and psycopg; bounded waits only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.kit.metrics import http
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.services import REDIS_URL, direct_dsn
from tests.kit.streams import statements

WORKERS = 2
BOUND = 15.0  # seconds: far less than the 30 s statements, far more than a cancel needs
SESSIONS = 16  # with the kernel's hash, all cancels staying on their session's worker has odds 2**-16


class Workers:
    """A `--workers 2` proxy and the metrics port of each worker."""

    def __init__(self, proxy: ProxyProcess, metrics_base: int) -> None:
        self.proxy = proxy
        self.ports = [metrics_base + i for i in range(WORKERS)]

    def samples(self, index: int, name: str) -> float:
        """Sum of every sample called ``name`` (all label values) on worker ``index``'s /metrics."""
        status, _headers, text = http(f"http://127.0.0.1:{self.ports[index]}/metrics")
        assert status == 200, text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name)

    def per_worker(self, name: str) -> list[float]:
        return [self.samples(i, name) for i in range(WORKERS)]

    def which(self, name: str, before: list[float]) -> int:
        """Index of the one worker whose counter ``name`` grew since ``before`` (waits for it, bounded)."""
        def moved() -> list[int]:
            now = self.per_worker(name)
            return [i for i in range(WORKERS) if now[i] > before[i]]
        grew = wait_until(moved, f"{name} to grow on a worker", timeout=BOUND)
        assert len(grew) == 1, f"{name} grew on workers {grew}: more happened than this test did"
        return grew[0]

    def connect(self, **extra: str) -> tuple[psycopg.Connection, int]:
        """A new autocommit session and the index of the worker that accepted it."""
        before = self.per_worker("fasterdata_proxy_connections_total")
        conn = psycopg.connect(self.proxy.dsn(**extra), autocommit=True, connect_timeout=10)
        return conn, self.which("fasterdata_proxy_connections_total", before)

    def children(self) -> list[int]:
        """Pids of the parent's child processes (live or not yet reaped)."""
        pid = self.proxy.proc.pid
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]


def adjacent_free_ports(count: int) -> int:
    """A port p such that p … p+count-1 are all free now (worker i binds metrics port + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for i in range(1, count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", base + i))
            except OSError:
                continue
        return base
    raise RuntimeError("no run of free ports found")


def healthy(port: int) -> bool:
    """/healthz answers 200 (a refused connection is a no, not an error)."""
    try:
        return http(f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


def state(pid: int) -> str:
    """The process state letter from /proc (R, S, Z …), or '' when the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def dead(pid: int) -> bool:
    """Gone or a zombie whose every thread has exited (only then are its sockets closed: the leader
    shows 'Z' while other threads still hold the descriptor table, and with it the listening socket)."""
    try:
        return state(pid) in ("Z", "") and os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except OSError:
        return True


@pytest.fixture
def workers(start_proxy: StartProxy) -> Iterator[Callable[..., Workers]]:
    """Factory: a `--workers 2` proxy whose workers all answer /metrics."""
    started: list[Workers] = []

    def start(*args: str) -> Workers:
        base = adjacent_free_ports(WORKERS)
        proxy = start_proxy("--workers", str(WORKERS), "--metrics", f"127.0.0.1:{base}", *args)
        w = Workers(proxy, base)
        started.append(w)
        for i in range(WORKERS):
            wait_until(lambda i=i: healthy(w.ports[i]),
                       f"worker {i}'s metrics to answer", timeout=BOUND, interval=0.1)
        return w

    yield start  # start_proxy's teardown stops each (exit 0) and deletes its keys


def open_on_both(w: Workers, total: int, **extra: str) -> list[tuple[psycopg.Connection, int]]:
    """At least ``total`` sessions, and more until every worker has one (bounded: odds halve each time)."""
    conns: list[tuple[psycopg.Connection, int]] = []
    try:
        while len(conns) < total or len({i for _c, i in conns}) < WORKERS:
            assert len(conns) < total + 40, "the kernel never spread sessions over both workers"
            conns.append(w.connect(**extra))
    except BaseException:
        for c, _i in conns:
            c.close()
        raise
    return conns


def sleeping(marker: str) -> int:
    """Backends of this test busy in pg_sleep, seen over a direct connection."""
    with psycopg.connect(direct_dsn(), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where application_name = %s "
                           "and state = 'active' and query like 'select pg_sleep%%'", (marker,)).fetchone()
    return row[0] if row else 0


def test_cancel_reaches_the_backend_whichever_worker_gets_it(workers: Callable[..., Workers]) -> None:
    """Each session's cancel arrives on a new connection, on any worker; every statement ends with 57014."""
    w = workers()
    marker = f"fd-workers-{uuid.uuid4().hex[:8]}"
    sessions = open_on_both(w, SESSIONS, application_name=marker)
    served = [i for _c, i in sessions]
    cancelled_by: list[int] = []
    try:
        with ThreadPoolExecutor(len(sessions)) as pool:
            running = [pool.submit(c.execute, "select pg_sleep(30)") for c, _i in sessions]
            wait_until(lambda: sleeping(marker) == len(sessions), "every session to be in pg_sleep", timeout=BOUND)
            for conn, _i in sessions:
                before = w.per_worker("fasterdata_proxy_cancel_requests_total")
                conn.cancel()
                cancelled_by.append(w.which("fasterdata_proxy_cancel_requests_total", before))
            for future in running:
                with pytest.raises(psycopg.errors.QueryCanceled) as info:
                    future.result(timeout=BOUND)
                assert info.value.sqlstate == "57014"
        for conn, _i in sessions:  # the sessions survive their cancelled statement
            assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    finally:
        for conn, _i in sessions:
            conn.close()
    assert set(served) == set(range(WORKERS)), f"sessions per worker: {served}"
    crossed = sum(1 for s, c in zip(served, cancelled_by, strict=True) if s != c)
    assert crossed > 0, f"no cancel landed on another worker than its session (sessions {served})"


def test_each_worker_serves_metrics_and_counts_its_statements(workers: Callable[..., Workers]) -> None:
    """Worker i's /metrics is on port + i; the statement counters of all workers add up to what ran."""
    w = workers()
    marker = f"fd-workers-{uuid.uuid4().hex[:8]}"
    sessions = open_on_both(w, 8, application_name=marker)
    ran = 0
    try:
        for n, (conn, _i) in enumerate(sessions):
            for k in range(10 + n):
                conn.execute("select %s::int", (k,))
                ran += 1
            conn.execute("select 'simple protocol'", prepare=False)
            ran += 1
    finally:
        for conn, _i in sessions:
            conn.close()
    per = wait_until(lambda: (p := w.per_worker("fasterdata_proxy_statements_total")) and sum(p) >= ran and p,
                     "the workers' statement counters to reach the statements run", timeout=BOUND)
    assert sum(per) == ran, f"statement counters {per} for {ran} statements"
    assert all(n > 0 for n in per), f"a worker counted no statement: {per}"
    # Both workers write one stream; it holds each statement once.
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    wait_until(lambda: len(statements(r, w.proxy.prefix, app=marker)) >= ran, "the stream to catch up",
               timeout=BOUND)
    assert len(statements(r, w.proxy.prefix, app=marker)) == ran


def test_sigterm_to_the_parent_stops_every_worker(workers: Callable[..., Workers]) -> None:
    """SIGTERM goes to every worker: busy statements finish, idle sessions are closed, the parent exits 0."""
    w = workers("--shutdown-grace", "20")
    children = w.children()
    assert len(children) == WORKERS
    marker = f"fd-workers-{uuid.uuid4().hex[:8]}"
    sessions = open_on_both(w, 4, application_name=marker)
    busy = [next(c for c, i in sessions if i == index) for index in range(WORKERS)]  # one per worker
    idle = [c for c, _i in sessions if c not in busy]
    try:
        with ThreadPoolExecutor(len(busy)) as pool:
            running = [pool.submit(c.execute, "select pg_sleep(2)") for c in busy]
            wait_until(lambda: sleeping(marker) == len(busy), "a busy session on each worker", timeout=BOUND)
            w.proxy.proc.send_signal(signal.SIGTERM)
            for future in running:  # the statement each worker was running completes
                assert future.result(timeout=BOUND + 20).fetchone() == ("",)
        rc = w.proxy.proc.wait(BOUND + 20)
        for conn in idle:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
    finally:
        for conn, _i in sessions:
            conn.close()
    assert rc == 0, w.proxy.log()
    assert [state(pid) for pid in children] == [""] * WORKERS  # reaped by the parent
    assert w.proxy.log().count("fasterdata: stopped") == WORKERS


def test_sighup_reaches_every_worker_and_the_parent_stays(workers: Callable[..., Workers]) -> None:
    """SIGHUP (TLS reload) is passed to each worker; the parent and the workers keep running."""
    w = workers()
    children = w.children()
    w.proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: w.proxy.log().count("SIGHUP: no tls_cert/tls_key configured") == WORKERS,
               "every worker to handle SIGHUP", timeout=BOUND)
    assert w.proxy.proc.poll() is None, w.proxy.log()
    assert w.children() == children and all(state(pid) not in ("", "Z") for pid in children)
    sessions = open_on_both(w, 2)
    for conn, _i in sessions:
        assert conn.execute("select 1").fetchone() == (1,)
        conn.close()


def test_a_dead_worker_is_started_again(workers: Callable[..., Workers]) -> None:
    """A worker killed with SIGKILL is replaced on the same index: its metrics port answers again, both
    workers take sessions, the parent logs what happened, and a later SIGTERM still ends in exit 0."""
    w = workers()
    children = w.children()
    assert len(children) == WORKERS
    victim = children[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: state(victim) == "", "the dead worker to be reaped", timeout=BOUND)
    wait_until(lambda: len(w.children()) == WORKERS and victim not in w.children(), "a new worker", timeout=BOUND)
    for i in range(WORKERS):
        wait_until(lambda i=i: healthy(w.ports[i]), f"worker {i}'s metrics to answer again", timeout=BOUND)
    assert w.proxy.proc.poll() is None
    assert f"(pid {victim}) ended with signal 9; starting it again" in w.proxy.log()
    for conn, _i in open_on_both(w, 2):  # the replacement shares the port again
        assert conn.execute("select 1").fetchone() == (1,)
        conn.close()
    assert w.proxy.stop() == 0, w.proxy.log()


def test_a_worker_that_cannot_start_stops_the_parent(start_proxy: StartProxy) -> None:
    """A worker that dies right after every start (its metrics port is taken) is not restarted for ever:
    after a few tries the parent stops the others and exits 1, with a line saying why."""
    base = adjacent_free_ports(WORKERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        proxy = start_proxy("--workers", str(WORKERS), "--metrics", f"127.0.0.1:{base}", wait=False)
        rc = proxy.proc.wait(BOUND * 2)
    assert rc == 1, proxy.log()
    assert "right after starting, 3 times in a row: stopping" in proxy.log()


def test_sigterm_while_workers_start(start_proxy: StartProxy) -> None:
    """SIGTERM as soon as the parent exists (workers still starting) is held until each worker can
    handle it: every worker stops cleanly and the parent exits 0."""
    base = adjacent_free_ports(WORKERS)  # worker i binds metrics port + i: all of them must be free
    proxy = start_proxy("--workers", str(WORKERS), "--metrics", f"127.0.0.1:{base}", wait=False)
    wait_until(lambda: len(Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text().split())
               == WORKERS, "the workers to be forked", timeout=BOUND, interval=0.005)
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(BOUND * 2) == 0, proxy.log()
