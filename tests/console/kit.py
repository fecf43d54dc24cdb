"""What the console's tests share: the known workload, `fasterdata console` as a process, the queries the
page's numbers are checked against."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from fasterdata.analyzers.worker import Worker
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.analysis import drain
from tests.kit.polling import wait_until
from tests.kit.ports import free_port, wait_port
from tests.kit.processes import ROOT, ChildProcess, ProxyProcess
from tests.kit.services import REDIS_URL
from tests.kit.streams import entries
from tests.kit.workload import Workload

APP = "shop"
REGION_SALES = "SELECT count(*), sum(total) FROM orders WHERE region = %s"
STOCK_OF = "SELECT qty FROM inventory WHERE sku = %s"


@dataclass
class Shop:
    """The workload's connection through the proxy, its worker, and the prefix they share."""

    proxy: ProxyProcess
    conn: psycopg.Connection
    workload: Workload
    worker: Worker
    r: redis.Redis
    marks: int = 0

    @property
    def prefix(self) -> str:
        return self.proxy.prefix

    def settle(self) -> None:
        """Wait for the proxy's sink to write every statement run so far (a marker statement sent last,
        on the same session, arrives last), then analyse them all."""
        self.marks += 1
        marker = f"SELECT 'settled {self.marks}'"
        self.conn.execute(marker)
        stream = stream_name(self.prefix)
        wait_until(lambda: any(e.get("sql") == marker for _, e in entries(self.r, stream)),
                   what="the proxy's sink to write the workload")
        drain(self.worker)


class ConsoleProcess(ChildProcess):
    """`fasterdata console` as a subprocess on a prefix of the machine's Redis."""

    def __init__(self, tmp: Path, prefix: str, *args: str, redis_url: str = REDIS_URL,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp / f"console-{self.port}.log"
        cmd = [sys.executable, "-m", "fasterdata", "console", "--listen", f"127.0.0.1:{self.port}",
               "--redis", redis_url, "--prefix", prefix, *args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            wait_port(self.port, timeout=30)
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"console did not start:\n{self.log()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
