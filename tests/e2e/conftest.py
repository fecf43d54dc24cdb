"""Fixtures for the end-to-end suite: the real `fasterdata proxy` process, the shared Redis, pgbench data.

Proxies started here get unique prefixes, and every key under them is deleted afterwards, so the
shared Redis keeps nothing from a run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.conftest import REDIS_URL, RUN_ID, ProxyProcess, delete_prefix

StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    """A client of the machine's (shared) Redis, decoding responses."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def e2e_proxy(start_proxy: StartProxy, rds: redis.Redis) -> Iterator[StartProxy]:
    """Like ``start_proxy``, and the keys of every proxy it started are removed from Redis afterwards."""
    started: list[ProxyProcess] = []

    def start(*args: str, upstream: str | None = None, env: dict[str, str] | None = None) -> ProxyProcess:
        p = start_proxy(*args, upstream=upstream, env=env)
        started.append(p)
        return p

    yield start
    # start_proxy's teardown (which stops the processes) runs after this one: stop them first so no
    # sink writes a key after the delete.
    try:
        for p in started:
            running = p.proc.poll() is None
            rc = p.stop()
            assert not running or rc == 0, f"proxy exited {rc} on SIGTERM:\n{p.log()}"
    finally:
        for p in started:
            delete_prefix(rds, p.prefix)


@pytest.fixture
def app_name() -> str:
    """A unique application_name: the test's events are the ones carrying it."""
    return f"e2e-{RUN_ID}-{uuid.uuid4().hex[:6]}"



