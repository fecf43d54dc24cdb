"""Bounded waits: the bound turns a hang into a failure; it asserts no speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
What = str | Callable[[], str]  # a callable is asked only on failure (e.g. for a log as it is by then)


def _say(what: What) -> str:
    return what() if callable(what) else what


def poll(check: Callable[[], T], timeout: float = 60.0, interval: float = 0.05) -> T:
    """The first truthy value of ``check()``, or its value at the deadline (always asked once more then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def wait_until(check: Callable[[], T], what: What = "a condition", timeout: float = 60.0,
               interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy, and return that; AssertionError at the deadline."""
    result = poll(check, timeout, interval)
    if not result:
        raise AssertionError(f"gave up waiting for {_say(what)} after {timeout}s (last value {result!r})")
    return result


async def until(check: Callable[[], T], what: What = "a condition", timeout: float = 60.0,
                interval: float = 0.01) -> T:
    """wait_until for a coroutine: sleeps on the event loop, so the code it waits for runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {_say(what)} after {timeout}s (last value {result!r})")
        await asyncio.sleep(interval)
