"""Fixtures for every directory: `fasterdata proxy` run as a real process, scratch databases, Hypothesis
budgets. Helpers live in tests/kit/."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis
import pytest
import redis

from tests.kit.databases import scratch_database
from tests.kit.processes import ProxyProcess, stop_all
from tests.kit.services import PG_HOST, PG_PORT, PG_USER, REDIS_URL


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    """Factory: start_proxy('--flag', 'value', upstream=...) → ProxyProcess; all stopped (exit 0) at teardown."""
    started: list[ProxyProcess] = []

    def start(*args: str, upstream: str | None = None, env: dict[str, str] | None = None,
              wait: bool = True, preexec: Callable[[], None] | None = None) -> ProxyProcess:
        p = ProxyProcess(tmp_path, *args, upstream=upstream, env=env, wait=wait, preexec=preexec)
        started.append(p)
        return p

    yield start
    stop_all(started)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy in front of the machine's PostgreSQL, shared by a test module."""
    p = ProxyProcess(tmp_path_factory.mktemp("proxy"))
    yield p
    stop_all([p])


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    """A client of the machine's (shared) Redis, decoding responses."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def scratch_db() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    with scratch_database() as name:
        yield name


# Hypothesis budgets. The fuzz targets (tests/test_wire.py test_fuzz_*, tests/capture/test_session_fuzz.py)
# take max_examples from the loaded profile: "ci" (the default) keeps a modest budget; bench/fuzz/run.py
# loads "fuzz" through FASTERDATA_HYPOTHESIS_PROFILE, with FASTERDATA_FUZZ_EXAMPLES examples per call.
# Tests that set max_examples themselves keep theirs under any profile.
HYPOTHESIS_PROFILE_ENV = "FASTERDATA_HYPOTHESIS_PROFILE"
hypothesis.settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FASTERDATA_FUZZ_EXAMPLES", "20000")), deadline=None,
    database=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large])
hypothesis.settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV, "ci"))


@pytest.fixture
def bench_db(scratch_db: str) -> str:
    """A scratch database with pgbench's tables at scale 1, initialised directly (not through a proxy)."""
    done = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER,
                           scratch_db], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return scratch_db
