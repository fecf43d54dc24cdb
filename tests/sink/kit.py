"""Helpers for the sink tests: numbered test events, and putting them the way a busy proxy does."""

from __future__ import annotations

import asyncio

from fasterdata.proxy.sink import StreamSink


def events(n: int, start: int = 0, **extra: str) -> list[dict[str, str]]:
    """Numbered events shaped like statement events (fixed width, so sizes are equal)."""
    return [{"n": f"{i:07d}", "sid": f"s{i % 7}", "sql": f"SELECT {i:07d} AS answer", "tag": "SELECT 1",
             **extra} for i in range(start, start + n)]


async def put_in_bursts(sink: StreamSink, events: list[dict[str, str]], burst: int) -> None:
    """put() `burst` events at a time, letting the sender run in between (as a busy proxy's loop does)."""
    for i in range(0, len(events), burst):
        for fields in events[i:i + burst]:
            sink.put(fields)
        await asyncio.sleep(0)
