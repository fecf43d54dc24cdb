"""Fixtures for the end-to-end suite: the real `fasterdata proxy` process, the shared Redis, pgbench data.

Proxies come from tests/conftest.py's ``start_proxy``: unique prefixes, every key under them deleted after
the test, so the shared Redis keeps nothing from a run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import REDIS_URL, RUN_ID
from tests.proxy.pxkit import StartProxy

__all__ = ["StartProxy"]


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    """A client of the machine's (shared) Redis, decoding responses."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def app_name() -> str:
    """A unique application_name: the test's events are the ones carrying it."""
    return f"e2e-{RUN_ID}-{uuid.uuid4().hex[:6]}"



