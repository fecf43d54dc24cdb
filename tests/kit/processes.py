"""`fasterdata` commands run as child processes, the way users run them, each with its output in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis

from tests.kit.ports import free_port, wait_port
from tests.kit.prefixes import delete_prefix
from tests.kit.services import PG_HOST, PG_PORT, PG_USER, REDIS_URL, RUN_ID

ROOT = Path(__file__).resolve().parents[2]


class ChildProcess:
    """A fasterdata command run as a subprocess with its output in a log file; stop() asserts nothing."""

    proc: subprocess.Popen
    log_path: Path
    _log: IO[bytes]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
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
        self._log.close()
        return self.proc.returncode


class GLServeProcess(ChildProcess):
    """`fasterdata gl serve` as a subprocess, its Flight server on a free port; started once that port answers."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.flight_port = free_port()
        self.log_path = tmp / f"gl-serve-{self.flight_port}.log"
        cmd = [sys.executable, "-m", "fasterdata", "gl", "serve", "--flight", f"127.0.0.1:{self.flight_port}",
               *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port(self.flight_port, timeout=30)


class ProxyProcess(ChildProcess):
    """`fasterdata proxy` as a subprocess in front of the machine's PostgreSQL (or ``upstream``), with a
    prefix of its own on the machine's Redis."""

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
                                     cwd=ROOT, preexec_fn=preexec)
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


class WorkerProcess(ChildProcess):
    """`python -m fasterdata.analyzers.cli analyze` as a subprocess, as operators run it."""

    def __init__(self, tmp: Path, prefix: str, rules_path: Path, consumer: str, *args: str,
                 env: dict[str, str] | None = None, redis_url: str = REDIS_URL) -> None:
        self.metrics_port = free_port()
        self.log_path = tmp / f"worker-{consumer}.log"
        cmd = [sys.executable, "-m", "fasterdata", "analyze", "--redis", redis_url, "--prefix", prefix,
               "--metrics", f"127.0.0.1:{self.metrics_port}", "--rules", str(rules_path),
               "--consumer", consumer, *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


Proxy = ProxyProcess  # the `proxy` fixture and what `start_proxy` returns
StartProxy = Callable[..., ProxyProcess]  # the `start_proxy` fixture


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
