"""Fixtures for the statement sink: unique key prefixes on the shared Redis, private servers to abuse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis
import uvloop

from tests.kit.prefixes import delete_prefix
from tests.kit.redisserver import RedisServer
from tests.kit.services import REDIS_URL, RUN_ID


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable]:
    """Every async sink test runs on the stock loop and on uvloop (what the proxy runs)."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of its own; every key under it is deleted from the shared Redis afterwards."""
    name = f"fdtest{RUN_ID}sink{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, name)
    client.close()


@pytest.fixture
def shared_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory: redis_server('--requirepass', 'x', tls=certs) → a private RedisServer, destroyed afterwards."""
    servers: list[RedisServer] = []

    def start(*args: str, tls: dict[str, str] | None = None) -> RedisServer:
        server = RedisServer(tmp_path, *args, tls=tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.destroy()
