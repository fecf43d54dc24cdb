"""Reading statement events (flat string fields, schema v1) without building objects per entry.

An event is the dict Redis returns. These helpers decode the few fields that are not plain strings,
lazily, because most statements never need their parameters decoded.
"""

from __future__ import annotations

import json
import json.scanner
import time
from decimal import Decimal, InvalidOperation
from typing import Any

# The contract lives with its producer (one package: the analyzers' CLI imports proxy as well).
from fasterdata.proxy.events import (  # noqa: F401 (re-exported)
    AUTOCOMMIT,
    BUNDLE_FIELD,
    COMMITTED,
    PACKED_FIELD,
    SCHEMA_VERSION,
    BadBundle,
    events_of,
    unbundle,
    unpack,
)

SCHEMA = SCHEMA_VERSION
COUNTED = frozenset({COMMITTED, AUTOCOMMIT})  # transaction outcomes whose work counts


class BadEvent(ValueError):
    """An entry that does not follow the event contract (counted and skipped)."""


# The C scanner json.loads ends in, called directly: the proxy writes compact arrays, so the wrappers
# (BOM, whitespace, type checks) would cost several times the scan itself on every business statement.
_SCAN = json.scanner.make_scanner(json.JSONDecoder())


def params(ev: dict[str, str]) -> list[Any] | None:
    raw = ev.get("params")
    if not raw:
        return None
    try:
        value, end = _SCAN(raw, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(raw):  # not exactly one JSON value (whitespace, trailing text, an error): json.loads decides
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise BadEvent(f"params is not JSON: {exc}") from None
    if not isinstance(value, list):
        raise BadEvent("params is not a JSON array")
    return value


def integer(ev: dict[str, str], field: str) -> int:
    raw = ev.get(field)
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise BadEvent(f"{field} is not an integer: {raw!r}") from None


_DAYS: dict[int, str] = {}


def day(ts_us: int) -> str:
    """UTC calendar day of an event timestamp (µs), cached per day number."""
    n = ts_us // 86_400_000_000
    name = _DAYS.get(n)
    if name is None:
        name = time.strftime("%Y-%m-%d", time.gmtime(n * 86400))
        _DAYS[n] = name
    return name


def decimal(value: Any) -> Decimal | None:
    """A bound or literal value as an exact decimal; None for NULL, booleans and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def text(value: Any) -> str:
    """A value as a label or distinct member: NULL → 'null', booleans as SQL spells them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal | float):
        d = decimal(value)
        return format(d.normalize(), "f") if d is not None else str(value)
    return str(value)
