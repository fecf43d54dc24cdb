"""A stream read back the way every consumer decodes it (fasterdata.proxy.events.events_of)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from fasterdata.proxy.events import events_of
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.services import REDIS_URL

if TYPE_CHECKING:
    from tests.kit.processes import ProxyProcess

Event = dict[str, str]
PAGE = 5000  # entries per XRANGE call, so a long stream is not fetched in one reply


def entries(r: Any, key: str) -> list[tuple[str, Event]]:
    """Every event of a stream, oldest first, as (entry id, event): the events of a bundled entry share
    its id. ``r`` is a decoding redis-py client (plain or cluster)."""
    out: list[tuple[str, Event]] = []
    start = "-"
    while True:
        chunk = r.xrange(key, start, "+", count=PAGE)
        if not chunk:
            return out
        out.extend((entry_id, e) for entry_id, fields in chunk for e in events_of(fields))
        start = "(" + chunk[-1][0]


def stream_events(r: Any, key: str) -> list[Event]:
    """Every event of a stream, oldest first."""
    return [e for _id, e in entries(r, key)]


def statements(r: Any, prefix: str, **match: str) -> list[Event]:
    """The ``kind=stmt`` events of ``<prefix>:statements`` whose fields equal ``match``, in stream order."""
    return [f for _id, f in entries(r, stream_name(prefix))
            if f.get("kind") == "stmt" and all(f.get(k) == v for k, v in match.items())]


def captured(proxy: ProxyProcess, app: str) -> list[str]:
    """SQL of the statement events a proxy wrote for ``application_name=app``, read from the machine's Redis."""
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [f["sql"] for f in statements(r, proxy.prefix, app=app)]
    finally:
        r.close()
