"""A known workload through the real proxy and analyzer, and `fasterdata console` over what they stored.

The shop workload (tests/kit/workload.py) runs through a `fasterdata proxy` process into a scratch
database; an in-process worker drains the stream into Redis under the proxy's own prefix. The console
runs as its own process on that prefix, and a headless chromium (Debian's) opens it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from fasterdata.analyzers.rules import parse
from fasterdata.analyzers.worker import Worker
from fasterdata.console.browser import chromium, missing
from tests.kit.analysis import drain, make_worker
from tests.kit.databases import scratch_database
from tests.kit.polling import wait_until
from tests.kit.ports import free_port, wait_port
from tests.kit.processes import ROOT, ChildProcess, ProxyProcess, stop_all
from tests.kit.services import REDIS_URL, direct_dsn
from tests.kit.streams import entries
from tests.kit.workload import RULES, SKUS, NoEvents, Workload

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
        stream = f"{self.prefix}:statements"
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


@pytest.fixture(scope="package")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    proxy = ProxyProcess(tmp_path_factory.mktemp("proxy"))
    try:
        with scratch_database() as db, \
                psycopg.connect(proxy.dsn(db), autocommit=True, application_name=APP) as conn:
            workload = Workload(conn, NoEvents(), seed=23)  # type: ignore[arg-type]
            workload.setup()  # its CREATE TABLEs from an application not allowed DDL: ddl alerts
            workload.run_many(120)
            for region in ("eu", "us", "ap"):  # a SELECT for the side connection to explain
                conn.execute(REGION_SALES, [region])
            with conn.transaction():  # an N+1: one statement per item, in one transaction
                for sku in SKUS:
                    conn.execute(STOCK_OF, [sku])
            # plans: every slow-enough SELECT's sample explained on a side connection to the database itself
            # new categories from the start (no learning time), N+1 from 5 executions of a transaction
            worker = make_worker(proxy.prefix, parse(RULES), explain_dsn=direct_dsn(db), explain_min_ms=0,
                                 explain_per_minute=600, new_category_learn_seconds=0, n_plus_one=5)
            s = Shop(proxy, conn, workload, worker, r)
            s.settle()
            yield s
            worker.close()
    finally:
        stop_all([proxy])
        r.close()


@pytest.fixture(scope="package")
def console(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    c = ConsoleProcess(tmp_path_factory.mktemp("console"), shop.prefix,
                       "--proxy-metrics", f"http://127.0.0.1:{shop.proxy.metrics_port}/metrics")
    yield c
    assert c.stop() == 0, c.log()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    problem = missing()
    if problem:
        pytest.skip(f"no headless browser: {problem}")
    with chromium() as driver:
        yield driver
