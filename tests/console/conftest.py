"""A known workload through the real proxy and analyzer, and `fasterdata console` over what they stored.

The shop workload (tests/kit/workload.py) runs through a `fasterdata proxy` process into a scratch
database; an in-process worker drains the stream into Redis under the proxy's own prefix. The console
runs as its own process on that prefix, and a headless chromium (Debian's) opens it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from fasterdata.analyzers.rules import parse
from fasterdata.console.browser import chromium, missing
from tests.console.kit import APP, REGION_SALES, STOCK_OF, ConsoleProcess, Shop
from tests.kit.analysis import make_worker
from tests.kit.databases import scratch_database
from tests.kit.processes import ProxyProcess, stop_all
from tests.kit.services import REDIS_URL, direct_dsn
from tests.kit.workload import RULES, SKUS, NoEvents, Workload


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
