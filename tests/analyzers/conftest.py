"""Fixtures for analyzer tests (helpers live in kit.py)."""

from tests.analyzers.kit import events, prefix, r, start_worker

__all__ = ["events", "prefix", "r", "start_worker"]
