"""Bound parameter values → a JSON array text, decoded by type OID from text or binary format.

Hand-written ``struct`` decoding for the common types: psycopg's loaders work without a connection
but cost a Transformer and several Python calls per value, several times this. Each decoder returns
a JSON *fragment* (``123``, ``"abc"``, ``null``) and the caller joins them, so no intermediate
Python values are built for the common scalars.

Nothing here raises on bad input: a value that does not decode becomes its hex form with a marker,
and a Bind body that does not parse becomes a one-element array saying so.
"""

from __future__ import annotations

import datetime as _dt
import math
import struct
from collections.abc import Callable, Container
from json.encoder import encode_basestring  # type: ignore[attr-defined]

_i16 = struct.Struct("!h").unpack_from
_i32 = struct.Struct("!i").unpack_from
_u32 = struct.Struct("!I").unpack_from
_i64 = struct.Struct("!q").unpack_from
_f32 = struct.Struct("!f").unpack
_f64 = struct.Struct("!d").unpack
_pack_f32 = struct.Struct("!f").pack
_interval = struct.Struct("!qii").unpack
_timetz = struct.Struct("!qi").unpack
_numeric_head = struct.Struct("!hhHh").unpack_from

HIDDEN = '"***"'

# Type OIDs.
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 114, 142, 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802

ARRAY_ELEMENT = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1016: INT8, 1005: INT2, 1007: INT4, 1009: TEXT,
    1028: OID, 199: JSON, 143: XML, 1021: FLOAT4, 1022: FLOAT8, 1014: BPCHAR, 1015: VARCHAR,
    1182: DATE, 1183: TIME, 1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1187: INTERVAL, 1270: TIMETZ,
    1231: NUMERIC, 2951: UUID, 3807: JSONB,
}

_TYPE_NAMES = {
    BOOL: "bool", INT2: "int2", INT4: "int4", INT8: "int8", OID: "oid", FLOAT4: "float4",
    FLOAT8: "float8", NUMERIC: "numeric", DATE: "date", TIME: "time", TIMETZ: "timetz",
    TIMESTAMP: "timestamp", TIMESTAMPTZ: "timestamptz", INTERVAL: "interval", UUID: "uuid",
    JSONB: "jsonb", TEXT: "text",
}

_PG_EPOCH_ORDINAL = _dt.date(2000, 1, 1).toordinal()
_PG_EPOCH = _dt.datetime(2000, 1, 1)
_PG_EPOCH_JDATE = 2451545
_USECS_PER_DAY = 86_400_000_000
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def _hex(v: bytes) -> str:
    return encode_basestring("\\x" + v.hex())


def _bad(v: bytes, oid: int) -> str:
    return encode_basestring(f"\\x{v.hex()}[invalid {_TYPE_NAMES.get(oid, str(oid))}]")


def _text(v: bytes) -> str:
    try:
        return encode_basestring(v.decode("utf-8"))
    except UnicodeDecodeError:
        return _bad(v, TEXT)


# -- text format -----------------------------------------------------------------------------------


def _t_int(v: bytes, oid: int) -> str:
    try:
        return str(int(v))
    except ValueError:
        return _text(v)


def _float_json(x: float) -> str:
    if math.isfinite(x):
        return repr(x)
    return '"NaN"' if x != x else ('"Infinity"' if x > 0 else '"-Infinity"')


def _t_float(v: bytes, oid: int) -> str:
    try:
        return _float_json(float(v))
    except ValueError:
        return _text(v)


def _t_bool(v: bytes, oid: int) -> str:
    low = v.strip().lower()
    if low in (b"t", b"true", b"yes", b"y", b"on", b"1"):
        return "true"
    if low in (b"f", b"false", b"no", b"n", b"off", b"0"):
        return "false"
    return _text(v)


def _t_text(v: bytes, oid: int) -> str:
    return _text(v)


def _t_array(v: bytes, oid: int) -> str:
    try:
        s = v.decode("utf-8")
    except UnicodeDecodeError:
        return _bad(v, oid)
    elem = ARRAY_ELEMENT.get(oid, TEXT)
    decode = _TEXT.get(elem, _t_text)
    try:
        return _ArrayText(s, elem, decode).parse()
    except (ValueError, IndexError):
        return encode_basestring(s)


class _ArrayText:
    """PostgreSQL's array text form ``{1,2,"a b",NULL,{…}}`` → a JSON array."""

    __slots__ = ("decode", "elem", "pos", "s")

    def __init__(self, s: str, elem: int, decode: Callable[[bytes, int], str]) -> None:
        self.s = s
        self.elem = elem
        self.decode = decode
        self.pos = 0

    def parse(self) -> str:
        s = self.s
        if s.startswith("["):  # dimension decoration: [1:3]={…}
            eq = s.index("=")
            self.pos = eq + 1
        self._ws()
        out = self._array()
        self._ws()
        if self.pos != len(s):
            raise ValueError("junk after array")
        return out

    def _ws(self) -> None:
        s = self.s
        while self.pos < len(s) and s[self.pos].isspace():
            self.pos += 1

    def _array(self) -> str:
        s = self.s
        if s[self.pos] != "{":
            raise ValueError("array must start with {")
        self.pos += 1
        items: list[str] = []
        self._ws()
        if s[self.pos] == "}":
            self.pos += 1
            return "[]"
        while True:
            self._ws()
            ch = s[self.pos]
            if ch == "{":
                items.append(self._array())
            elif ch == '"':
                items.append(self.decode(self._quoted().encode("utf-8"), self.elem))
            else:
                raw = self._unquoted()
                if raw.upper() == "NULL":
                    items.append("null")
                else:
                    items.append(self.decode(raw.encode("utf-8"), self.elem))
            self._ws()
            ch = s[self.pos]
            self.pos += 1
            if ch == "}":
                return "[" + ",".join(items) + "]"
            if ch != ",":
                raise ValueError("expected , or }")

    def _quoted(self) -> str:
        s = self.s
        self.pos += 1
        out = []
        while True:
            ch = s[self.pos]
            if ch == "\\":
                out.append(s[self.pos + 1])
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(ch)
                self.pos += 1

    def _unquoted(self) -> str:
        s = self.s
        out = []
        while True:
            ch = s[self.pos]
            if ch in ",}":
                return "".join(out).strip()
            if ch == "\\":
                out.append(s[self.pos + 1])
                self.pos += 2
            else:
                out.append(ch)
                self.pos += 1


# -- binary format ---------------------------------------------------------------------------------


def _b_int2(v: bytes, oid: int) -> str:
    return str(_i16(v)[0]) if len(v) == 2 else _bad(v, oid)


def _b_int4(v: bytes, oid: int) -> str:
    return str(_i32(v)[0]) if len(v) == 4 else _bad(v, oid)


def _b_oid(v: bytes, oid: int) -> str:
    return str(_u32(v)[0]) if len(v) == 4 else _bad(v, oid)


def _b_int8(v: bytes, oid: int) -> str:
    return str(_i64(v)[0]) if len(v) == 8 else _bad(v, oid)


def _b_float4(v: bytes, oid: int) -> str:
    if len(v) != 4:
        return _bad(v, oid)
    x = _f32(v)[0]
    if not math.isfinite(x):
        return _float_json(x)
    for digits in range(6, 10):  # shortest text that reads back as the same float4, as PostgreSQL prints
        text = f"{x:.{digits}g}"
        if _pack_f32(float(text)) == v:
            return repr(float(text))
    return repr(x)


def _b_float8(v: bytes, oid: int) -> str:
    return _float_json(_f64(v)[0]) if len(v) == 8 else _bad(v, oid)


def _b_bool(v: bytes, oid: int) -> str:
    if len(v) != 1:
        return _bad(v, oid)
    return "true" if v[0] else "false"


def _b_bytea(v: bytes, oid: int) -> str:
    return _hex(v)


def _b_jsonb(v: bytes, oid: int) -> str:
    if v[:1] != b"\x01":
        return _bad(v, oid)
    return _text(v[1:])


def _b_uuid(v: bytes, oid: int) -> str:
    if len(v) != 16:
        return _bad(v, oid)
    h = v.hex()
    return f'"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"'


def _b_numeric(v: bytes, oid: int) -> str:
    try:
        ndigits, weight, sign, dscale = _numeric_head(v, 0)
        if sign == 0xC000:
            return '"NaN"'
        if sign == 0xD000:
            return '"Infinity"'
        if sign == 0xF000:
            return '"-Infinity"'
        if sign not in (0, 0x4000) or ndigits < 0 or dscale < 0 or len(v) != 8 + 2 * ndigits:
            return _bad(v, oid)
        digits = struct.unpack_from(f"!{ndigits}H", v, 8)
        if any(d > 9999 for d in digits):
            return _bad(v, oid)
        # Base-10000 digits d0 d1 … with d0 at 10000**weight.
        int_groups = [f"{d:04d}" for d in digits[: max(weight + 1, 0)]]
        int_groups += ["0000"] * (weight + 1 - len(int_groups))
        int_part = "".join(int_groups).lstrip("0") or "0"
        frac = ""
        if dscale:
            lead = "0000" * max(-weight - 1, 0)
            frac_digits = "".join(f"{d:04d}" for d in digits[max(weight + 1, 0) :])
            frac = (lead + frac_digits)[:dscale].ljust(dscale, "0")
        text = int_part + ("." + frac if frac else "")
        return f'"-{text}"' if sign == 0x4000 and text.strip("0.") else f'"{text}"'
    except struct.error:
        return _bad(v, oid)


def _j2date(jd: int) -> tuple[int, int, int]:
    """Julian day → (year, month, day), PostgreSQL's own algorithm (any year, BC included)."""
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    year = y - 4800
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return year, month, day


def _date_text(days: int) -> str:
    if 1 - _PG_EPOCH_ORDINAL <= days <= 2914000:  # within Python's date range (years 1..9999)
        try:
            return _dt.date.fromordinal(days + _PG_EPOCH_ORDINAL).isoformat()
        except (ValueError, OverflowError):
            pass
    jd = days + _PG_EPOCH_JDATE
    if jd < 0:
        raise ValueError("date before the Julian epoch")
    year, month, day = _j2date(jd)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _time_text(usecs: int) -> str:
    secs, frac = divmod(usecs, 1_000_000)
    mins, sec = divmod(secs, 60)
    hour, minute = divmod(mins, 60)
    out = f"{hour:02d}:{minute:02d}:{sec:02d}"
    return f"{out}.{frac:06d}".rstrip("0") if frac else out


def _b_date(v: bytes, oid: int) -> str:
    if len(v) != 4:
        return _bad(v, oid)
    days = _i32(v)[0]
    if days == 0x7FFFFFFF:
        return '"infinity"'
    if days == -0x80000000:
        return '"-infinity"'
    try:
        return f'"{_date_text(days)}"'
    except (ValueError, OverflowError):
        return _bad(v, oid)


def _b_time(v: bytes, oid: int) -> str:
    if len(v) != 8:
        return _bad(v, oid)
    usecs = _i64(v)[0]
    if not 0 <= usecs <= _USECS_PER_DAY:
        return _bad(v, oid)
    return f'"{_time_text(usecs)}"'


def _b_timetz(v: bytes, oid: int) -> str:
    if len(v) != 12:
        return _bad(v, oid)
    usecs, zone = _timetz(v)
    if not 0 <= usecs <= _USECS_PER_DAY:
        return _bad(v, oid)
    return f'"{_time_text(usecs)}{_zone_text(-zone)}"'


def _zone_text(offset: int) -> str:
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    out = f"{sign}{hours:02d}"
    if minutes or seconds:
        out += f":{minutes:02d}"
    if seconds:
        out += f":{seconds:02d}"
    return out


def _timestamp_text(usecs: int) -> str:
    try:
        ts = _PG_EPOCH + _dt.timedelta(microseconds=usecs)
    except OverflowError:  # outside years 1..9999: PostgreSQL's own calendar arithmetic
        days, rest = divmod(usecs, _USECS_PER_DAY)
        date = _date_text(days)
        if date.endswith(" BC"):
            return f"{date[:-3]} {_time_text(rest)} BC"
        return f"{date} {_time_text(rest)}"
    out = f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d} {ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
    frac = ts.microsecond
    return f"{out}.{frac:06d}".rstrip("0") if frac else out


def _b_timestamp(v: bytes, oid: int) -> str:
    if len(v) != 8:
        return _bad(v, oid)
    usecs = _i64(v)[0]
    if usecs == _INT64_MAX:
        return '"infinity"'
    if usecs == _INT64_MIN:
        return '"-infinity"'
    try:
        text = _timestamp_text(usecs)
    except (ValueError, OverflowError):
        return _bad(v, oid)
    if oid == TIMESTAMPTZ:
        if text.endswith(" BC"):
            return f'"{text[:-3]}+00 BC"'
        return f'"{text}+00"'
    return f'"{text}"'


def _b_interval(v: bytes, oid: int) -> str:
    if len(v) != 16:
        return _bad(v, oid)
    usecs, days, months = _interval(v)
    return f'"{_interval_text(usecs, days, months)}"'


def _trunc_div(a: int, b: int) -> tuple[int, int]:
    """C-style division (toward zero), as PostgreSQL's interval output uses."""
    q = abs(a) // b
    q = q if a >= 0 else -q
    return q, a - q * b


def _interval_text(usecs: int, days: int, months: int) -> str:
    """PostgreSQL's IntervalStyle 'postgres' output (the default)."""
    year, mon = _trunc_div(months, 12)
    hour, rest = _trunc_div(usecs, 3_600_000_000)
    minute, rest = _trunc_div(rest, 60_000_000)
    sec, fsec = _trunc_div(rest, 1_000_000)
    parts: list[str] = []
    is_before = False
    for value, unit in ((year, "year"), (mon, "mon"), (days, "day")):
        if value:
            plus = "+" if is_before and value > 0 else ""
            parts.append(f"{plus}{value} {unit}{'' if value == 1 else 's'}")
            is_before = value < 0
    if not parts or hour or minute or sec or fsec:
        minus = hour < 0 or minute < 0 or sec < 0 or fsec < 0
        sign = "-" if minus else ("+" if is_before else "")
        text = f"{sign}{abs(hour):02d}:{abs(minute):02d}:{abs(sec):02d}"
        if fsec:
            text += f".{abs(fsec):06d}".rstrip("0")
        parts.append(text)
    return " ".join(parts)


def _b_array(v: bytes, oid: int) -> str:
    try:
        ndim, _flags, elem = struct.unpack_from("!iiI", v, 0)
        if ndim == 0:
            return "[]"
        if not 0 < ndim <= 6:
            return _bad(v, oid)
        dims = [_i32(v, 12 + 8 * d)[0] for d in range(ndim)]
        if any(d < 0 for d in dims):
            return _bad(v, oid)
        pos = 12 + 8 * ndim
        decode = _BINARY.get(elem, _b_unknown)
        flat: list[str] = []
        total = math.prod(dims)
        if total > len(v):  # each element needs 4 length bytes at least
            return _bad(v, oid)
        for _ in range(total):
            size = _i32(v, pos)[0]
            pos += 4
            if size < 0:
                flat.append("null")
                continue
            if pos + size > len(v):
                return _bad(v, oid)
            flat.append(decode(v[pos : pos + size], elem))
            pos += size
        if pos != len(v):
            return _bad(v, oid)
        for size in reversed(dims[1:]):
            flat = ["[" + ",".join(flat[i : i + size]) + "]" for i in range(0, len(flat), size)]
        return "[" + ",".join(flat) + "]"
    except struct.error:
        return _bad(v, oid)


def _b_unknown(v: bytes, oid: int) -> str:
    return _hex(v)


def _b_text(v: bytes, oid: int) -> str:
    return _text(v)


Decoder = Callable[[bytes, int], str]

_TEXT: dict[int, Decoder] = {
    INT2: _t_int, INT4: _t_int, INT8: _t_int, OID: _t_int, FLOAT4: _t_float, FLOAT8: _t_float,
    BOOL: _t_bool, **dict.fromkeys(ARRAY_ELEMENT, _t_array),
}
_BINARY: dict[int, Decoder] = {
    INT2: _b_int2, INT4: _b_int4, INT8: _b_int8, OID: _b_oid, FLOAT4: _b_float4, FLOAT8: _b_float8,
    BOOL: _b_bool, BYTEA: _b_bytea, NUMERIC: _b_numeric, DATE: _b_date, TIME: _b_time,
    TIMETZ: _b_timetz, TIMESTAMP: _b_timestamp, TIMESTAMPTZ: _b_timestamp, INTERVAL: _b_interval,
    UUID: _b_uuid, JSONB: _b_jsonb,
    **dict.fromkeys((TEXT, VARCHAR, BPCHAR, NAME, CHAR, UNKNOWN, JSON, XML), _b_text),
    **dict.fromkeys(ARRAY_ELEMENT, _b_array),
}
# Binary types whose bytes are text: a long value is cut and shown as text, not hex.
_TEXTLIKE_BINARY = frozenset((TEXT, VARCHAR, BPCHAR, NAME, CHAR, UNKNOWN, JSON, XML))


def decode_value(v: bytes, fmt: int, oid: int, max_bytes: int = 1 << 30, missing: int = 0) -> str:
    """One value → a JSON fragment. ``missing``: bytes of the value the decoder did not keep."""
    if len(v) > max_bytes or missing:
        return _truncated(v[:max_bytes], fmt, oid, len(v) + missing - min(len(v), max_bytes))
    if fmt == 0:
        dec = _TEXT.get(oid)
        return _text(v) if dec is None else dec(v, oid)
    if fmt == 1:
        return _BINARY.get(oid, _b_unknown)(v, oid)
    return _bad(v, oid)


def _truncated(head: bytes, fmt: int, oid: int, cut: int) -> str:
    marker = f"…[truncated {cut} bytes]"
    if fmt == 0 or oid in _TEXTLIKE_BINARY:
        if oid == JSONB and fmt == 1:
            head = head[1:]
        return encode_basestring(head.decode("utf-8", "ignore") + marker)
    return encode_basestring("\\x" + head.hex() + marker)


def bind_params_py(
    body: bytes, length: int, pos: int, oids: list[int], max_bytes: int,
    hidden: Container[int] | None = None,
) -> str:
    """A Bind body's parameters (from ``pos``, just after the two names) → JSON array text.

    ``length`` is the body length announced on the wire; when the decoder kept only a prefix,
    values past it are reported cut. ``hidden`` holds 0-based indexes to show as ``"***"``.

    The reference for proxy/_params.c's ``bind_params``, which gives the same text and runs in its
    place when built; this one runs when it was not.
    """
    try:
        nfmt = _i16(body, pos)[0]
        pos += 2
        if nfmt < 0:
            return '["…[malformed Bind]"]'
        fmts = struct.unpack_from(f"!{nfmt}h", body, pos) if nfmt else ()
        pos += 2 * nfmt
        count = _i16(body, pos)[0]
        pos += 2
        end_body = len(body)
        noids = len(oids)
        out: list[str] = []
        append = out.append
        text_get = _TEXT.get
        binary_get = _BINARY.get
        for i in range(count):
            if pos + 4 > end_body:
                if length > end_body:  # the decoder kept a prefix only
                    append(f'"…[truncated: {count - i} more parameters]"')
                    break
                return '["…[malformed Bind]"]'
            size = _i32(body, pos)[0]
            pos += 4
            if size < 0:
                append("null")
                continue
            if hidden is not None and i in hidden:
                append(HIDDEN)
                pos += size
                continue
            fmt = fmts[0] if nfmt == 1 else (fmts[i] if nfmt else 0)
            oid = oids[i] if i < noids else 0
            end = pos + size
            if end > end_body:
                if length <= end_body:
                    return '["…[malformed Bind]"]'
                append(decode_value(body[pos:], fmt, oid, max_bytes, end - end_body))
                if i + 1 < count:
                    append(f'"…[truncated: {count - i - 1} more parameters]"')
                break
            v = body[pos:end]
            pos = end
            if size > max_bytes:
                append(_truncated(v[:max_bytes], fmt, oid, size - max_bytes))
            elif fmt == 0:  # decode_value inlined for the common case
                dec = text_get(oid)
                append(_text(v) if dec is None else dec(v, oid))
            elif fmt == 1:
                append(binary_get(oid, _b_unknown)(v, oid))
            else:
                append(_bad(v, oid))
        return "[" + ",".join(out) + "]"
    except (struct.error, IndexError):
        return '["…[malformed Bind]"]'
    except Exception:  # decoding must never break capture
        return '["…[undecodable Bind]"]'


try:  # the same in C (proxy/_params.c); absent when the package was built without a compiler
    from ._params import bind_params
except ImportError:
    bind_params = bind_params_py
