"""Shared fixtures: the machine's PostgreSQL and Redis, and `fasterdata proxy` run as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import hypothesis
import psycopg
import pytest
import redis

from fasterdata.proxy.events import events_of

PG_HOST = os.environ.get("FASTERDATA_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FASTERDATA_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("FASTERDATA_TEST_PGUSER", "postgres")
REDIS_URL = os.environ.get("FASTERDATA_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]
T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this test run handed out before: the kernel may offer a
    port again as soon as it is closed, and a proxy's listen and metrics ports then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(check: Callable[[], T], what: str = "a condition", timeout: float = 60.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; the bound turns a hang into a failure, it asserts no speed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout}s (last value {result!r})")
        time.sleep(interval)


def direct_dsn(dbname: str = "postgres", user: str = PG_USER, **extra: str) -> str:
    parts = {"host": PG_HOST, "port": str(PG_PORT), "user": user, "dbname": dbname, **extra}
    return " ".join(f"{k}={v}" for k, v in parts.items())


class ChildProcess:
    """A fasterdata command run as a subprocess with its output in a log file; stop() asserts nothing."""

    proc: subprocess.Popen
    log_path: Path
    _log: object

    def log(self) -> str:
        if not self._log.closed:  # type: ignore[attr-defined]
            self._log.flush()  # type: ignore[attr-defined]
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{type(self).__name__} ignored signal {sig} for {timeout}s:\n{self.log()}") from None
        self._log.close()  # type: ignore[attr-defined]
        return self.proc.returncode


class ProxyProcess(ChildProcess):
    """`fasterdata proxy` as a subprocess, the way users run it."""

    def __init__(self, tmp: Path, *args: str, upstream: str | None = None, env: dict[str, str] | None = None,
                 wait: bool = True, preexec: Callable[[], None] | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.prefix = f"fdtest{RUN_ID}{uuid.uuid4().hex[:6]}"
        self.log_path = tmp / f"proxy-{self.port}.log"
        cmd = [
            sys.executable, "-m", "fasterdata", "proxy",
            "--listen", f"127.0.0.1:{self.port}",
            "--upstream", upstream or f"{PG_HOST}:{PG_PORT}",
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            "--redis", REDIS_URL,
            "--prefix", self.prefix,
            *args,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=Path(__file__).resolve().parent.parent, preexec_fn=preexec)
        if not wait:  # the caller watches the start itself
            return
        try:
            wait_port(self.port)
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start:\n{self.log()}") from None

    def dsn(self, dbname: str = "postgres", user: str = PG_USER, **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": user, "dbname": dbname, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def url(self, dbname: str = "postgres", user: str = PG_USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"


def entries(r: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """XRANGE of a whole stream as (id, event), each event of a bundled entry with that entry's id (a
    decoding client)."""
    return [(entry_id, e) for entry_id, fields in r.xrange(key) for e in events_of(fields)]


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    """Remove every key a proxy with this prefix created (stream, idempotency markers)."""
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def forget(proxies: list[ProxyProcess]) -> None:
    """The shared Redis keeps nothing of stopped test proxies (private servers go with their directory)."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        for p in proxies:
            delete_prefix(r, p.prefix)
    except redis.RedisError:
        pass  # a test that broke Redis on purpose: nothing to clean there
    finally:
        r.close()


def stop_all(started: list[ProxyProcess]) -> None:
    """Teardown: SIGTERM every proxy still running; each must exit 0 (a graceful stop is part of the contract)."""
    try:
        for p in started:
            running = p.proc.poll() is None
            rc = p.stop()
            if running:
                assert rc == 0, f"proxy exited {rc} on SIGTERM:\n{p.log()}"
    finally:
        forget(started)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    """Factory: start_proxy('--flag', 'value', upstream=...) → ProxyProcess; all stopped (exit 0) at teardown."""
    started: list[ProxyProcess] = []

    def start(*args: str, upstream: str | None = None, env: dict[str, str] | None = None,
              wait: bool = True, preexec: Callable[[], None] | None = None) -> ProxyProcess:
        p = ProxyProcess(tmp_path, *args, upstream=upstream, env=env, wait=wait, preexec=preexec)
        started.append(p)
        return p

    yield start
    stop_all(started)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy in front of the machine's PostgreSQL, shared by a test module."""
    p = ProxyProcess(tmp_path_factory.mktemp("proxy"))
    yield p
    stop_all([p])


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    name = f"fdtest_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Hypothesis budgets. The fuzz targets (tests/test_wire.py test_fuzz_*, tests/capture/test_session_fuzz.py)
# take max_examples from the loaded profile: "ci" (the default) keeps a modest budget; bench/fuzz/run.py
# loads "fuzz" through FASTERDATA_HYPOTHESIS_PROFILE, with FASTERDATA_FUZZ_EXAMPLES examples per call.
# Tests that set max_examples themselves keep theirs under any profile.
HYPOTHESIS_PROFILE_ENV = "FASTERDATA_HYPOTHESIS_PROFILE"
hypothesis.settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FASTERDATA_FUZZ_EXAMPLES", "20000")), deadline=None,
    database=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large])
hypothesis.settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV, "ci"))


@pytest.fixture
def bench_db(scratch_db: str) -> str:
    """A scratch database with pgbench's tables at scale 1, initialised directly (not through a proxy)."""
    done = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER,
                           scratch_db], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return scratch_db
