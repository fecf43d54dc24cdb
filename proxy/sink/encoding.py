"""A batch of events as the one EVALSHA command that adds it (append.lua's calling convention)."""

from __future__ import annotations

import logging
from itertools import chain, islice, repeat
from typing import Any

import hiredis

from fasterdata.proxy.events import BUNDLE_MAX, PACKED_FIELD, pack

log = logging.getLogger("fasterdata.sink")

# Lua's unpack() stops near 8000 values: flat events with more fields are cut to this many.
MAX_FIELDS = 3000


def _joined(events: list[dict[str, str]]) -> list[str] | None:
    """Each event's names and values joined with NUL, or None when a name or value is not str or holds
    a NUL, or an event has no fields."""
    try:  # every event joined at C speed; the NUL count of the batch proves no name or value held one
        values = list(map("\x00".join, map(chain.from_iterable, map(dict.items, events))))
    except TypeError:
        return None
    return values if sum(map(str.count, values, repeat("\x00"))) == 2 * sum(map(len, events)) - len(events) else None


def pack_bundled_py(head: tuple, events: list[dict[str, str]]) -> bytes | None:
    """``hiredis.pack_command((*head, *map(len, events), *packed))``, each event packed to one string
    (its names and values joined with NUL), or None when one cannot be: a value not str, a NUL or a lone
    surrogate in a name or value, an event without fields. The default entry's batches take this path."""
    values = _joined(events)
    if values is None:
        return None
    try:
        return hiredis.pack_command((*head, *map(len, events), *values))
    except (TypeError, UnicodeError):  # a lone surrogate
        return None


try:  # the same in C (proxy/sink/_bundle.c); absent when the package was built without a compiler
    from ._bundle import pack_bundled
except ImportError:
    pack_bundled = pack_bundled_py


class _KeySets(dict):
    """Key tuple → index, numbering new key sets as they appear; lookups stay in C."""

    def __missing__(self, keys: tuple) -> int:
        index = self[keys] = len(self)
        return index


def as_bytes(value: Any) -> bytes:
    """Bytes for one value on the slow path: keeps raw bytes smuggled in by surrogateescape."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        value = str(value)
    try:
        return value.encode()
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace")


def encode_batch(head: tuple, seq0: int, maxlen: int, ttl: int, events: list[dict[str, str]],
                 entry: str = "flat") -> bytes:
    """One EVALSHA command (RESP bytes) adding ``events``; ``head`` = (EVALSHA, sha, 2, stream, marker).

    entry (proxy.events): ``bundled`` or ``packed``: each event is packed to one string (names and
    values joined with NUL), sent one argument an event; the script joins up to BUNDLE_MAX of them an
    entry (bundled) or adds one an entry (packed). An event that cannot be packed sends the batch the
    packed way, that event flat. ``flat``, fast path: values joined with NUL in C (PostgreSQL text
    cannot hold NUL, so the proxy's values never do); a batch where the count of NULs says otherwise,
    or with non-str values, takes the slow path with one argument per value.
    """
    packed = entry != "flat"
    if packed:
        n = len(events)
        if entry == "bundled":
            data = pack_bundled((*head, seq0, maxlen, ttl, "p", BUNDLE_MAX, n), events)
            if data is not None:
                return data
        elif (values := _joined(events)) is not None:
            try:
                return hiredis.pack_command((*head, seq0, maxlen, ttl, "a", 1, 1, PACKED_FIELD, n, *repeat(0, n),
                                             *values))
            except (TypeError, UnicodeError):  # a lone surrogate: the general path below
                pass
        events = [{PACKED_FIELD: p} if (p := pack(e)) is not None else e for e in events]
    sets = _KeySets()
    ids = list(map(sets.__getitem__, map(tuple, events)))
    if any(len(keys) > MAX_FIELDS for keys in sets):
        log.error("events with more than %d fields were cut to that many", MAX_FIELDS)
        events = [dict(islice(e.items(), MAX_FIELDS)) if len(e) > MAX_FIELDS else e for e in events]
        return encode_batch(head, seq0, maxlen, ttl, events)
    nvalues = sum(map(len, events))
    joined: str | None = None
    if not packed:
        try:
            joined = "\x00".join(chain.from_iterable(map(dict.values, events)))
            if nvalues == 0 or joined.count("\x00") != nvalues - 1:
                joined = None
        except TypeError:
            joined = None
    args: list[Any] = [*head, seq0, maxlen, ttl, "a" if joined is None else "z", len(sets)]
    for keys in sets:
        args.append(len(keys))
        args.extend(keys)
    args.append(len(events))
    args.extend(ids)
    if joined is not None:
        args.append(joined)
    else:
        args.extend(map(as_bytes, chain.from_iterable(map(dict.values, events))))
    try:
        return hiredis.pack_command(tuple(args))
    except (UnicodeError, TypeError):
        return hiredis.pack_command(tuple(a if isinstance(a, int) else as_bytes(a) for a in args))
