"""Helpers for the sink tests: private redis-server processes (to kill, pause, restart or
reconfigure: the machine's Redis on 6379 is shared and never touched that way), test events,
reading a stream back, waiting without asserting speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from fasterdata.proxy.events import events_of
from fasterdata.proxy.sink import StreamSink
from tests.conftest import free_port


class RedisServer:
    """One redis-server on 127.0.0.1 with its own directory; restartable on the same port."""

    def __init__(self, tmp: Path, *args: str, tls: dict[str, str] | None = None) -> None:
        self.dir = tmp / f"redis-{os.getpid()}-{free_port()}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.args = list(args)
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir),
               "--logfile", str(self.dir / "redis.log")]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
                    "--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", self.tls.get("auth", "no")]
        else:
            cmd += ["--port", str(self.port)]
        if "--appendonly" not in self.args:
            cmd += ["--appendonly", "no"]
        return cmd + self.args

    def start(self) -> None:
        seen = len(self.log())  # the log survives restarts: look only at what this run writes
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log()}")
            if "Ready to accept connections" in self.log()[seen:]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not become ready:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, **kw: object) -> redis.Redis:
        """A redis-py client as the admin (no TLS servers here need one: tests use the sink)."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kw)  # type: ignore[arg-type]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        if self.paused:
            self.resume()
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(15)
        shutil.rmtree(self.dir, ignore_errors=True)


def tls_supported() -> str | None:
    """None if redis-server and openssl can do TLS here, else why not."""
    if shutil.which("openssl") is None:
        return "the openssl CLI is not installed"
    out = subprocess.run(["redis-server", "--port", "0", "--tls-port", "1"], capture_output=True, text=True,
                         timeout=10)
    text = out.stdout + out.stderr
    if "tls-cert-file" in text:  # TLS is compiled in: it only asks for a certificate
        return None
    last = text.strip().splitlines()[-1] if text.strip() else f"exit {out.returncode}"
    return f"redis-server was built without TLS ({last})"


def make_certs(where: Path) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=where)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fasterdata test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (where / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {"ca": str(where / "ca.pem"), "cert": str(where / "server.pem"), "key": str(where / "server.key"),
            "client_cert": str(where / "client.pem"), "client_key": str(where / "client.key")}


def read_stream(client: redis.Redis, key: str) -> list[dict[str, str]]:
    """Every entry of a stream, oldest first, as dicts of str (client must decode responses)."""
    out: list[dict[str, str]] = []
    start = "-"
    while True:
        chunk = client.xrange(key, start, "+", count=5000)
        if not chunk:
            return out
        out.extend(e for _id, fields in chunk for e in events_of(fields))
        start = "(" + chunk[-1][0]


def events(n: int, start: int = 0, **extra: str) -> list[dict[str, str]]:
    """Numbered events shaped like statement events (fixed width, so sizes are equal)."""
    return [{"n": f"{i:07d}", "sid": f"s{i % 7}", "sql": f"SELECT {i:07d} AS answer", "tag": "SELECT 1",
             **extra} for i in range(start, start + n)]


async def put_in_bursts(sink: StreamSink, events: list[dict[str, str]], burst: int) -> None:
    """put() `burst` events at a time, letting the sender run in between (as a busy proxy's loop does)."""
    for i in range(0, len(events), burst):
        for fields in events[i:i + burst]:
            sink.put(fields)
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for a condition; the timeout only guards against a hang, it asserts no speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)
