"""Analyzer test fixtures: a unique Redis prefix per test, event writers on it, workers run as real
subprocesses; and /metrics samples keyed as the analyzer tests read them."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.kit.analysis import RULES
from tests.kit.eventwriter import Events
from tests.kit.metrics import parse_samples
from tests.kit.prefixes import delete_prefix
from tests.kit.processes import WorkerProcess
from tests.kit.services import REDIS_URL, RUN_ID


@pytest.fixture
def r(rds: redis.Redis) -> redis.Redis:
    """The analyzer tests' name for the client of the machine's Redis."""
    return rds


@pytest.fixture
def prefix(r: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    p = f"fdtest{RUN_ID}{uuid.uuid4().hex[:6]}"
    yield p
    delete_prefix(r, p)


@pytest.fixture
def events(r: redis.Redis, prefix: str) -> Events:
    return Events(r, prefix)


@pytest.fixture
def packed_events(r: redis.Redis, prefix: str) -> Events:
    """One event an entry: for tests of what happens to single entries (pending, reclaimed, trimmed)."""
    return Events(r, prefix, entry="packed")


@pytest.fixture
def start_worker(tmp_path: Path, prefix: str) -> Iterator:
    """Factory: start_worker(consumer, *args, rules=RulesFile data, env=…, redis_url=…) → WorkerProcess;
    stopped at teardown."""
    started: list[WorkerProcess] = []
    rules_path = tmp_path / "rules.json"  # JSON is YAML
    rules_path.write_text(json.dumps(RULES))

    def start(consumer: str, *args: str, rules: dict | None = None, env: dict[str, str] | None = None,
              redis_url: str = REDIS_URL) -> WorkerProcess:
        path = rules_path
        if rules is not None:
            path = tmp_path / f"rules-{consumer}.json"
            path.write_text(json.dumps(rules))
        w = WorkerProcess(tmp_path, prefix, path, consumer, *args, env=env, redis_url=redis_url)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL if w.proc.poll() is None else signal.SIGTERM)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Exposition text as samples keyed by (name, sorted label pairs)."""
    return {(name, tuple(sorted(labels))): v for (name, labels), v in parse_samples(text).items()}
