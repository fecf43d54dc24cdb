"""The statement event contract: what the proxy puts on the ``statements`` stream.

Producers (``proxy.session``) and consumers (the analyzers) both import this module, so the field
names, the schema version and the capture options live here and nowhere else. Which keys hold the
entries (stream names, the sink's markers) is the other half of the contract: ``proxy.streamkeys``.

An event is a ``dict[str, str]``; a Redis Stream entry holds one or several. Numbers are decimal
strings; ``params`` and ``ptypes`` are JSON arrays. Fields with nothing to say are left out rather than
sent empty (entries stay small); the lists below say which fields every event carries.

How an entry holds events (``stream_entry``, a proxy setting; every consumer reads all three):

* ``bundled`` (default): one stream field, ``events``, holding up to ``BUNDLE_MAX`` events of one
  sink batch: the events' field counts joined with commas, then NUL, then every event's names and
  values joined with NUL: ``2,3\\0 v\\0 1\\0 sql\\0 BEGIN\\0 v\\0 1\\0 …`` (without the spaces). A busy
  proxy puts tens of statements in an entry, and Redis's work to append, deliver, keep pending and
  acknowledge an entry is paid once for all of them (bench/NOTES.md measures it). An idle one still
  sends each statement at once, one an entry.
* ``packed``: one event an entry, in one field, ``event``, its names and values joined with NUL:
  ``v\\0 1\\0 kind\\0 stmt\\0 ts\\0 …``.
* ``flat``: one stream field per event field, so ``redis-cli XRANGE`` shows ``sql`` as ``sql``.

NUL cannot occur in a value: PostgreSQL's text cannot hold it, and an event that would contain one
goes flat. ``events_of`` turns any entry into its events. A stream entry is therefore not always one
statement: XLEN, a group's lag and its pending count are entries; the analyzers' counters are statements.

Two kinds of entry:

``kind=stmt`` — one executed statement.
    Always present: v, kind, ts, dur_us, sid, client, user, db, proto, sql, txid, txn.
    Present when known or applicable: pid, app, stmt, part, params, ptypes, tag, rows, err, errmsg, n.

``kind=txn_end`` — closes a transaction whose statements went out early with ``txn=open`` (the
transaction held more statements than ``CaptureOptions.max_held``). Only then is it sent.
    Always present: v, kind, ts, sid, client, user, db, txid, txn, stmts.
    Present when known or applicable: pid, app, undone.

Field by field (``FIELDS`` below holds the same text for tools):

* ``v`` — schema version, ``SCHEMA_VERSION``. A consumer that sees a newer major version should stop.
* ``kind`` — ``stmt`` or ``txn_end``.
* ``ts`` — epoch microseconds when the statement started, as the proxy saw it: the arrival of the
  Query or Execute, or the completion of the previous statement on the same connection if that came
  later (later statements of a multi-statement Query, pipelined Executes). For a portal fetched by
  several Executes, the first one. For ``txn_end``: when the transaction ended.
* ``dur_us`` — microseconds from ``ts`` until CommandComplete / ErrorResponse (the proxy's view,
  network to the server included). The parts of a multi-statement Query cannot be timed apart: the
  server sends their replies in one write when the whole Query is done (unless they fill its output
  buffer first), so the first part carries the Query's time and the others what is left, often 0.
  Their ``dur_us`` add up to the Query's time; nothing on the wire tells which part spent it.
* ``sid`` — proxy session id (unique per proxy process and connection).
* ``client`` — client address ``host:port`` (or the socket path).
* ``user``, ``db`` — from the StartupMessage.
* ``app`` — ``application_name``: from the StartupMessage, updated by ParameterStatus.
* ``pid`` — backend process id (BackendKeyData); absent only if the server never sent one.
* ``proto`` — ``simple`` (Query message) or ``extended`` (Parse/Bind/Execute).
* ``stmt`` — prepared statement name; extended protocol with a named statement only.
* ``sql`` — the statement text, redacted (see ``CaptureOptions.redact``) and cut to ``max_sql_chars``.
  For a multi-statement Query, the text of this one statement (without its ``;``). Never empty:
  an Execute of a portal the proxy never saw bound reads ``/* statement unknown to the proxy */``.
* ``part`` — ``i/n``: this statement is the i-th of n in one simple-protocol Query message
  (``SELECT 1; DROP TABLE t`` gives ``1/2`` and ``2/2``); absent for a Query with one statement.
* ``params`` — JSON array of the bound values, decoded by type OID from text or binary format:
  integers and floats as JSON numbers (NaN/Infinity as strings), numeric as an exact JSON string,
  booleans as true/false, NULL as null, text-like, date/time, interval, uuid and json values as
  strings (json/jsonb text as a string, not nested), bytea as ``"\\x…"`` hex, arrays as JSON arrays.
  A value the proxy cannot decode (unknown type in binary format, malformed bytes) is ``"\\x…"``
  hex, followed by ``[invalid TYPE]`` when malformed. Values over ``max_param_bytes`` end in
  ``…[truncated N bytes]``. Redacted values are ``"***"``. Absent when the statement has no
  parameters.
* ``ptypes`` — JSON array of parameter type OIDs: from ParameterDescription when the client asked
  for one, else from Parse (0 = unspecified). Absent when there are none.
* ``tag`` — command tag without its counts: ``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``,
  ``MERGE``, ``COPY``, ``BEGIN``, ``CREATE TABLE`` … Absent when the statement failed, and for a
  portal abandoned after PortalSuspended (fetched partly, then closed or ended with its transaction).
* ``rows`` — the row count of the tag (``INSERT 0 5`` → ``5``); for a portal fetched in several
  Executes, the sum. Absent when the tag has no count.
* ``err`` — SQLSTATE of the ErrorResponse; only when the statement failed.
* ``errmsg`` — the error's primary message; only when the statement failed. When redaction hid a value in
  the statement, the message is cut before the first quoted part the redacted SQL does not contain
  (PostgreSQL quotes offending input values in its messages).
* ``txid`` — per-session transaction number, 1, 2, 3 … in the order transactions start.
* ``txn`` — the outcome of the statement's transaction:
  ``committed`` (explicit transaction ended by COMMIT), ``rolled_back`` (ROLLBACK; COMMIT of a failed
  transaction; any error in an implicit transaction — a lone statement, a multi-statement Query, a
  pipeline up to Sync; ROLLBACK TO SAVEPOINT for the statements after the savepoint; the connection
  closing inside a transaction), ``autocommit`` (no explicit transaction and no error),
  ``prepared`` (PREPARE TRANSACTION), or ``open`` (sent before the transaction ended: see
  ``txn_end``). A failed statement is never ``committed`` or ``autocommit``.
* ``stmts`` — (``txn_end`` only) how many statements of the transaction were sent early (numbered
  ``n`` = 1 … ``stmts``).
* ``n`` — (sent early only) this statement's number in its transaction, 1, 2, 3 …
* ``undone`` — (``txn_end`` only) ranges ``a-b[,c-d…]`` of those numbers whose work a ROLLBACK TO
  SAVEPOINT undid after they were sent: with ``txn=committed`` they still did not commit. Absent
  when nothing sent early was undone.

Not turned into events: EmptyQueryResponse (empty query text), FunctionCall, statements still
running when the connection closes, and extended-protocol requests the server skipped after an
error (everything up to the next Sync). A failed Parse is an event (with ``err``, no tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

SCHEMA_VERSION = "1"

PACKED_FIELD = "event"  # the one field of a packed entry
BUNDLE_FIELD = "events"  # the one field of a bundled entry
BUNDLE_MAX = 100  # events a bundled entry holds at most
ENTRY_FORMATS = ("bundled", "packed", "flat")

KIND_STMT = "stmt"
KIND_TXN_END = "txn_end"

COMMITTED = "committed"
ROLLED_BACK = "rolled_back"
AUTOCOMMIT = "autocommit"
PREPARED = "prepared"
OPEN = "open"
OUTCOMES = (COMMITTED, ROLLED_BACK, AUTOCOMMIT, PREPARED, OPEN)

FIELDS: dict[str, str] = {
    "v": "schema version",
    "kind": "stmt | txn_end",
    "ts": "statement start (txn_end: transaction end), epoch microseconds",
    "dur_us": "microseconds until CommandComplete / ErrorResponse",
    "sid": "proxy session id",
    "client": "client address",
    "user": "user name from the StartupMessage",
    "db": "database from the StartupMessage",
    "app": "application_name (StartupMessage, then ParameterStatus)",
    "pid": "backend process id",
    "proto": "simple | extended",
    "stmt": "prepared statement name (extended protocol, named statements)",
    "sql": "statement text, redacted",
    "part": "i/n: place among the statements of one multi-statement simple Query",
    "params": "JSON array of decoded bound values",
    "ptypes": "JSON array of parameter type OIDs",
    "tag": "command tag without counts",
    "rows": "row count from the command tag",
    "err": "SQLSTATE when the statement failed",
    "errmsg": "error message when the statement failed",
    "txid": "per-session transaction number",
    "txn": "committed | rolled_back | autocommit | prepared | open",
    "stmts": "txn_end: statements sent with txn=open",
    "n": "number of a statement sent with txn=open within its transaction",
    "undone": "txn_end: ranges a-b of those numbers undone by ROLLBACK TO SAVEPOINT",
}

ALWAYS_STMT = frozenset(
    ("v", "kind", "ts", "dur_us", "sid", "client", "user", "db", "proto", "sql", "txid", "txn"))
ALWAYS_TXN_END = frozenset(("v", "kind", "ts", "sid", "client", "user", "db", "txid", "txn", "stmts"))

DEFAULT_REDACT_COLUMNS = r"password|passwd|secret|token|ssn|card|cvv"


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """What the capture keeps and hides. Defaults suit production: everything sampled, secrets hidden."""

    # Fraction of transactions captured, 0..1; a sampled transaction is captured whole.
    sample_rate: float = 1.0
    # Statements held per open transaction before they go out with txn=open (then a txn_end follows).
    max_held: int = 1000
    # Longest parameter value kept, in bytes of its wire form; longer ones are cut with a marker.
    max_param_bytes: int = 1024
    # Longest SQL text kept, in characters (after redaction); longer is cut with a marker.
    max_sql_chars: int = 16384
    # Decode and send bound parameters at all.
    capture_params: bool = True
    # "columns": hide passwords and values of columns matching redact_columns (in SQL literals and
    # bound parameters). "all": hide every literal and every parameter. Passwords are always hidden.
    redact: str = "columns"
    # Case-insensitive regex searched in column names; empty string: no column redaction.
    redact_columns: str = DEFAULT_REDACT_COLUMNS
    # Distinct SQL texts whose redaction is remembered.
    redact_cache_size: int = 4096

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")
        if self.redact not in ("columns", "all"):
            raise ValueError("redact must be 'columns' or 'all'")
        if self.max_held < 0 or self.max_param_bytes < 16 or self.max_sql_chars < 16:
            raise ValueError("max_held must be >= 0, max_param_bytes and max_sql_chars >= 16")


def pack(event: dict[str, str]) -> str | None:
    """The value of a packed entry; None when a value is not text or holds a NUL (send it flat)."""
    try:
        text = "\x00".join(chain.from_iterable(event.items()))
    except TypeError:
        return None
    return text if text.count("\x00") == 2 * len(event) - 1 else None


def unpack(fields: dict[str, str]) -> dict[str, str]:
    """The event of a one-event stream entry as redis-py returns it (field → value), packed or flat."""
    if len(fields) == 1 and PACKED_FIELD in fields:
        it = iter(fields[PACKED_FIELD].split("\x00"))
        return dict(zip(it, it))  # noqa: B905 (an odd part is a damaged entry: its event fails validation)
    return fields


def bundle(events: list[dict[str, str]]) -> str | None:
    """The value of a bundled entry holding ``events`` (the sink's script builds the same in Redis); None
    when one of them cannot be packed."""
    packed = [pack(e) for e in events]
    if not packed or None in packed:
        return None
    return ",".join(str(len(e)) for e in events) + "\x00" + "\x00".join(packed)  # type: ignore[arg-type]


class BadBundle(ValueError):
    """A bundled entry whose field counts do not match its values."""


def unbundle(value: str) -> list[dict[str, str]]:
    """The events of a bundled entry's value (its one field, ``events``)."""
    parts = value.split("\x00")
    try:
        counts = [2 * int(c) for c in parts[0].split(",")]
    except ValueError:
        raise BadBundle(f"bad field counts {parts[0][:40]!r}") from None
    if sum(counts) != len(parts) - 1 or min(counts) < 0:
        raise BadBundle(f"field counts {parts[0][:40]!r} do not match {len(parts) - 1} names and values")
    out = []
    p = 1
    for c in counts:
        out.append(dict(zip(parts[p:p + c:2], parts[p + 1:p + c:2])))  # noqa: B905 (lengths checked above)
        p += c
    return out


def events_of(fields: dict[str, str] | list[str]) -> list[dict[str, str]]:
    """The events of any stream entry, bundled, packed or flat: its fields as redis-py returns them (field →
    value), or as Redis sends them (``[name, value, …]``, read without redis-py's reply callback, which
    saves building a dict an entry)."""
    if isinstance(fields, dict):
        if len(fields) == 1 and BUNDLE_FIELD in fields:
            return unbundle(fields[BUNDLE_FIELD])
        return [unpack(fields)]
    if len(fields) == 2:
        if fields[0] == BUNDLE_FIELD:
            return unbundle(fields[1])
        if fields[0] == PACKED_FIELD:
            fields = fields[1].split("\x00")
    it = iter(fields)
    return [dict(zip(it, it))]  # noqa: B905 (an odd part is a damaged entry: its event fails validation)
