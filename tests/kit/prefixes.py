"""The keys a test made under its own prefix: found, shown and deleted."""

from __future__ import annotations

import redis

from tests.kit.streams import entries


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    """Remove every key under ``<prefix>:`` (streams, markers, analyzer state)."""
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


def dump_prefix(r: redis.Redis, prefix: str) -> str:
    """Every key under the prefix with all its content, whatever its type, as one text to search
    (``r`` decodes responses)."""
    parts: list[str] = []
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        kind = r.type(key)
        parts.append(f"{kind} {key}")
        if kind == "stream":
            parts.extend(f"{i} {fields!r}" for i, fields in entries(r, key))
        elif kind == "string":
            parts.append(repr(r.get(key)))
        elif kind == "hash":
            parts.append(repr(r.hgetall(key)))
        elif kind == "list":
            parts.append(repr(r.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(repr(r.smembers(key)))
        elif kind == "zset":
            parts.append(repr(r.zrange(key, 0, -1, withscores=True)))
        else:
            parts.append(repr(r.dump(key)))
    return "\n".join(parts)
