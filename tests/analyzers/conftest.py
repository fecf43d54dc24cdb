"""Fixtures for analyzer tests (helpers live in kit.py)."""

from tests.analyzers.kit import events, packed_events, prefix, r, start_worker

__all__ = ["events", "packed_events", "prefix", "r", "start_worker"]
