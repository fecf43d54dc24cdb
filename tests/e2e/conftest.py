"""Fixtures for the end-to-end suite: a unique application_name to find a test's events by.

The real `fasterdata proxy` process (``start_proxy``), the shared Redis (``rds``) and pgbench data
(``bench_db``) come from tests/conftest.py: unique prefixes, every key under them deleted after the test,
so the shared Redis keeps nothing from a run.
"""

from __future__ import annotations

import uuid

import pytest

from tests.kit.services import RUN_ID


@pytest.fixture
def app_name() -> str:
    """A unique application_name: the test's events are the ones carrying it."""
    return f"e2e-{RUN_ID}-{uuid.uuid4().hex[:6]}"
