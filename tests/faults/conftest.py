"""Fixtures of the fault suite: a private redis-server per test (to kill or pause; the shared one on 6379 is
never touched that way) and a private PostgreSQL per module (to restart)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.pgcluster import PrivateCluster
from tests.kit.redisserver import RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster() as pg:
        yield pg
