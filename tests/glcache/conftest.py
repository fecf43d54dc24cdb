"""GL cache fixtures: a private database holding a ledger with awkward values, unique Redis prefixes
(helpers live in kit.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache.kit import drop_prefix, make_ledger
from tests.kit.databases import scratch_database
from tests.kit.services import REDIS_URL, RUN_ID, direct_dsn


@pytest.fixture(scope="module")
def ledger_db() -> Iterator[str]:
    """A database with gl_entries (awkward rows + BULK_ROWS generated ones on DAY), shared by a module."""
    with scratch_database("fdgl") as name:
        make_ledger(direct_dsn(name))
        yield direct_dsn(name)


@pytest.fixture
def fresh_ledger() -> Iterator[str]:
    """A ledger database of its own (for tests that write), dropped afterwards."""
    with scratch_database("fdgl") as name:
        make_ledger(direct_dsn(name), rows=2000)
        yield direct_dsn(name)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"fdgltest{RUN_ID}{uuid.uuid4().hex[:6]}"
    yield p
    drop_prefix(p)


@pytest.fixture
def make_cache(prefix: str) -> Iterator[Callable[..., GLCache]]:
    """Factory: make_cache(dsn, **settings) → GLCache on the machine's Redis under this test's prefix."""
    made: list[GLCache] = []

    def make(dsn: str, **overrides: Any) -> GLCache:
        options = {"dsn": dsn, "redis": REDIS_URL, "prefix": prefix, **overrides}
        cache = GLCache(**options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
