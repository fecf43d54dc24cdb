"""Private redis-server processes, to kill, pause, restart or reconfigure: the machine's Redis is shared
and never touched that way."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import redis

from tests.kit.polling import wait_until
from tests.kit.ports import free_port


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
        proc = self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {proc.returncode}:\n{self.log()}")
            return "Ready to accept connections" in self.log()[seen:]

        try:
            wait_until(ready, "redis-server to accept connections", timeout=15, interval=0.02)
        except AssertionError:
            raise RuntimeError(f"redis-server did not become ready:\n{self.log()}") from None

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
