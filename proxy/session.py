"""One client session's protocol state, turning its messages into statement events (sans-I/O).

The server feeds every decoded batch here right after forwarding the bytes: ``from_client`` with
what the client sent, ``from_server`` with what the backend answered, ``close`` when the
connection ends. Events go to ``emit`` as flat ``dict[str, str]`` (the contract is in
``proxy.events``).

How requests and responses are matched: the backend answers requests strictly in order, so the
session keeps one FIFO of the requests that will get an answer it needs — Query, Parse, Describe
(statement), Execute, Sync, FunctionCall — and pops it as answers arrive. Bind, Close and
Describe (portal) change only the session's maps of statements and portals, which are applied in
client order when they arrive. After an ErrorResponse to an extended-protocol message the backend
skips everything up to the next Sync; the FIFO drops the same requests, and if the client has not
sent that Sync yet, client messages are ignored until it does. ReadyForQuery pops everything up
to its Query/Sync, which also brings the FIFO back in line should anything ever disagree.

Transactions: events are held until their transaction ends, then stamped with its outcome (see
``proxy.events`` for the rules). The outcome comes from command tags — COMMIT, ROLLBACK (with the
SQL text telling ROLLBACK TO SAVEPOINT apart), PREPARE TRANSACTION — and from ReadyForQuery 'I'
for transactions without an explicit end (autocommit statements, implicit transactions of a
multi-statement Query or of a pipeline up to Sync).

Hot-path shape: queue entries, statements and portals are plain lists indexed by position; bytes
names are used as dict keys without decoding; Bind bodies are kept raw and their values decoded
only when an event is built; the redaction of a statement text is cached on the statement.
"""

from __future__ import annotations

import random
import re
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from . import params as _params
from . import sqlfit, sqltext
from .events import (
    AUTOCOMMIT,
    COMMITTED,
    KIND_STMT,
    KIND_TXN_END,
    OPEN,
    PREPARED,
    ROLLED_BACK,
    SCHEMA_VERSION,
    CaptureOptions,
)
from .redact import FORGET_TAGS, Hidden, Orders, Provisional, Redactor
from .seams import Emit
from .wire import (
    BACKEND_KEY,
    BIND,
    CLOSE,
    COMMAND_COMPLETE,
    COPY_DONE,
    COPY_FAIL,
    COPY_IN,
    DESCRIBE,
    EMPTY_QUERY,
    ERROR,
    EXECUTE,
    FUNCTION_CALL,
    PARAMETER_DESCRIPTION,
    PARAMETER_STATUS,
    PARSE,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    QUERY,
    READY,
    ROW_DESCRIPTION,
    SYNC,
    TXN_IDLE,
    Message,
    parse_backend_key,
    parse_command_complete,
    parse_fields,
    parse_parameter_description,
    parse_parameter_status,
)

# Message types the decoders keep; everything else is skipped by length, unread. PasswordMessage
# ('p', also SASL) is never among them, nor DataRow, CopyData or the Authentication requests.
# The type bytes are plain ints compared per message: module-level ints, no enum lookups.
FRONTEND_WANTED = "".join(map(chr, (QUERY, PARSE, BIND, EXECUTE, DESCRIBE, CLOSE, SYNC, FUNCTION_CALL, COPY_DONE,
                                    COPY_FAIL)))
BACKEND_WANTED = "".join(map(chr, (BACKEND_KEY, PARAMETER_STATUS, READY, COMMAND_COMPLETE, ERROR, EMPTY_QUERY,
                                   PARSE_COMPLETE, PORTAL_SUSPENDED, PARAMETER_DESCRIPTION, COPY_IN,
                                   ROW_DESCRIPTION)))

# FIFO entry kinds. Kinds up to _FUNC are answered by ReadyForQuery.
_LOGIN, _QUERY, _SYNC, _FUNC, _EXEC, _PARSE, _DESC, _COPYEND = range(8)
_LOGIN_ENTRY = (_LOGIN,)
_SYNC_ENTRY = (_SYNC,)
_FUNC_ENTRY = (_FUNC,)
_COPYEND_ENTRY = (_COPYEND,)
# _QUERY entry: [kind, arrival_us, sql, statements|None, next index, parse seq, failed]
# _EXEC entry:  [kind, arrival_us, portal|None, row limit, parse seq]
# _PARSE entry: [kind, arrival_us, statement, name, previous statement of that name]
# _DESC entry:  [kind, statement|None]

# Statement: [sql, param type oids, ptypes json|None, (redacted sql, hidden)|None, parse seq, name]
_ST_SQL, _ST_OIDS, _ST_PTYPES, _ST_RED, _ST_SEQ, _ST_NAME = range(6)
# Portal: [statement|None, Bind body, Bind length, offset of the formats, run start, run rows, last]
_P_ST, _P_BODY, _P_LEN, _P_POS, _P_START, _P_ROWS, _P_LAST = range(7)

_CONTROL_TAGS = frozenset((
    "BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "PREPARE TRANSACTION", "SAVEPOINT", "RELEASE",
    "DISCARD ALL", "DEALLOCATE", "DEALLOCATE ALL",
))

# The sql of an Execute whose portal or statement the session never saw (it cannot happen with a
# conforming client; the server answers such an Execute with an error).
UNKNOWN_SQL = "/* statement unknown to the proxy */"
_ENDING_TAGS = frozenset(("COMMIT", "ROLLBACK", "PREPARE TRANSACTION"))

_i32 = struct.Struct("!i").unpack_from
_i16 = struct.Struct("!h").unpack_from
_OID_STRUCTS: dict[int, Callable[..., tuple[int, ...]]] = {}

_redactors: dict[tuple[str, str, int], Redactor] = {}


def redactor_for(options: CaptureOptions) -> Redactor:
    """One Redactor (and so one cache) per distinct redaction setting, shared by all sessions."""
    key = (options.redact, options.redact_columns, options.redact_cache_size)
    red = _redactors.get(key)
    if red is None:
        red = _redactors[key] = Redactor(options.redact, options.redact_columns, options.redact_cache_size)
    return red


def _oids(body: bytes, pos: int, count: int) -> list[int]:
    unpack = _OID_STRUCTS.get(count)
    if unpack is None:
        unpack = _OID_STRUCTS[count] = struct.Struct(f"!{count}I").unpack_from
    return list(unpack(body, pos))


def _idents(sql: str) -> list[str]:
    """Folded identifiers and keywords of a short control statement (SAVEPOINT, DEALLOCATE …)."""
    return [sqltext.ident_name(sql, k, s, e) for k, s, e in sqltext.tokens(sql)
            if k == sqltext.IDENT or k == sqltext.QIDENT]


_QUOTED = re.compile(r'"([^"]*)"')


def _scrub(message: str, text: str) -> str:
    """Mask the error message from its first quoted part that the (redacted) SQL text does not show.

    Identifiers the statement names stay readable; a value hidden from the text cannot reappear
    (everything up to the message's last quote goes, in case the value itself held a quote).
    """
    low: str | None = None
    for m in _QUOTED.finditer(message):
        if low is None:
            low = text.lower()
        if m.group(1).lower() not in low:
            last = message.rfind('"')
            return message[: m.start()] + '"***"' + message[last + 1 :]
    return message


class Session:
    """Protocol state of one client connection and the statement events it yields."""

    __slots__ = (
        "_base", "_copy_wait", "_described", "_emit", "_explicit", "_ext", "_held", "_in_txn", "_last_done",
        "_max_held", "_max_param", "_max_sql", "_open", "_orders", "_portals", "_queue", "_rate", "_redactor",
        "_sampled", "_savepoints", "_seq", "_skip", "_status", "_stmts", "_suspended", "_txid",
        "_txid_s", "_txn_err", "_undone", "_want_params", "app", "backend_pid", "capture", "client", "closed",
        "database", "outstanding", "sid", "startup_options", "user",
    )

    def __init__(
        self,
        sid: str,
        client: str,
        params: dict[str, str],
        *,
        emit: Emit | None = None,
        options: CaptureOptions | None = None,
    ) -> None:
        opts = options or CaptureOptions()
        self.capture = opts
        self.sid = sid
        self.client = client
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        self.app = params.get("application_name", "")
        self.startup_options = params.get("options", "")
        self.backend_pid = 0
        self.closed = False
        # Requests awaiting answers; the login is answered by the first ReadyForQuery.
        self._queue: deque[Any] = deque((_LOGIN_ENTRY,))
        self.outstanding = 1  # Query, Sync and FunctionCall (and the login) awaiting ReadyForQuery
        self._status = TXN_IDLE
        self._stmts: dict[bytes, list[Any]] = {}
        self._portals: dict[bytes, list[Any]] = {}
        self._suspended: list[list[Any]] = []  # portals with a run stopped at PortalSuspended
        self._seq = 0  # Parse counter, orders statements against DEALLOCATE / DISCARD
        self._skip = False  # ignoring client messages until Sync (after an extended-protocol error)
        self._copy_wait = False  # in COPY FROM STDIN: the backend ignores Sync until CopyDone/Fail
        self._last_done = 0
        self._emit = emit
        self._rate = opts.sample_rate if emit is not None else 0.0
        self._max_held = opts.max_held
        self._max_param = opts.max_param_bytes
        self._max_sql = opts.max_sql_chars
        self._want_params = opts.capture_params
        self._redactor = redactor_for(opts)
        self._orders: Orders = {}  # column orders of tables, learned from RowDescriptions
        self._described: list[Any] | None = None  # statement whose RowDescription may come next
        # The transaction being captured.
        self._in_txn = False
        self._txid = 0
        self._txid_s = "0"
        self._sampled = False
        self._held: list[dict[str, str]] = []
        self._txn_err = False
        self._explicit = False
        self._ext = False  # holds extended-protocol statements (committed only at Sync)
        self._open = 0  # statements already sent with txn=open
        self._savepoints: list[tuple[str, int]] = []  # (name, statements of the transaction before it)
        self._undone: list[str] = []  # "a-b": open-sent statements a…b undone by ROLLBACK TO SAVEPOINT
        self._base: dict[str, str] = {}
        self._rebase()

    # -- what the server reads ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing in flight and no transaction open: closing now loses no work."""
        return self.outstanding <= 0 and self._status == TXN_IDLE

    @property
    def status(self) -> str:
        """Transaction status of the last ReadyForQuery: 'I', 'T' or 'E'."""
        return chr(self._status)

    def resume(self, backend_pid: int) -> None:
        """Pick up a session past its login (a restarted capture process): nothing awaited, idle."""
        self._queue.clear()
        self.outstanding = 0
        self.backend_pid = backend_pid
        self._rebase()

    def _rebase(self) -> None:
        base = {"v": SCHEMA_VERSION, "kind": KIND_STMT, "sid": self.sid, "client": self.client,
                "user": self.user, "db": self.database}
        if self.app:
            base["app"] = self.app
        if self.backend_pid:
            base["pid"] = str(self.backend_pid)
        self._base = base

    # -- client → server ------------------------------------------------------------------------

    def from_client(self, messages: list[Message], now_us: int) -> None:
        """Messages the client sent (already forwarded)."""
        q = self._queue
        portals = self._portals
        for typ, body, length in messages:
            if self._skip:
                if typ == SYNC:  # Sync ends the skipping
                    self._skip = False
                    q.append(_SYNC_ENTRY)
                    self.outstanding += 1
                continue
            if typ == BIND:
                i = body.find(0)
                j = body.find(0, i + 1)
                if j < 0:
                    continue
                name = body[:i]
                old = portals.get(name)
                if old is not None and old[_P_START]:
                    self._abandon(old)
                portals[name] = [self._stmts.get(body[i + 1 : j]), body, length, j + 1, 0, 0, 0]
            elif typ == EXECUTE:
                i = body.find(0)
                limit = _i32(body, i + 1)[0] if 0 <= i <= len(body) - 5 else 0
                q.append([_EXEC, now_us, portals.get(body[:i]), limit, self._seq])
            elif typ == SYNC:
                if not self._copy_wait:
                    q.append(_SYNC_ENTRY)
                    self.outstanding += 1
            elif typ == PARSE:
                self._parse(body, length, now_us)
            elif typ == QUERY:
                end = body.find(0)
                if end >= 0:
                    sql = body[:end].decode("utf-8", "replace")
                else:  # cut by the decoder's keep limit
                    sql = body.decode("utf-8", "ignore") + f"…[truncated {length - len(body)} bytes]"
                q.append([_QUERY, now_us, sql, None, 0, self._seq, False])
                self.outstanding += 1
            elif typ == DESCRIBE:  # only a statement's answer (ParameterDescription) matters
                if body[:1] == b"S":
                    end = body.find(0, 1)
                    q.append([_DESC, self._stmts.get(body[1 : end if end >= 0 else len(body)])])
            elif typ == CLOSE:
                end = body.find(0, 1)
                name = body[1 : end if end >= 0 else len(body)]
                if body[:1] == b"S":
                    self._stmts.pop(name, None)
                else:
                    old = portals.pop(name, None)
                    if old is not None and old[_P_START]:
                        self._abandon(old)
            elif typ == FUNCTION_CALL:  # answered by ReadyForQuery like a Query
                q.append(_FUNC_ENTRY)
                self.outstanding += 1
            elif typ in (COPY_DONE, COPY_FAIL):
                if self._copy_wait:
                    self._copy_wait = False
                else:
                    q.append(_COPYEND_ENTRY)  # the backend's CopyInResponse has not arrived yet

    def _parse(self, body: bytes, length: int, now_us: int) -> None:
        i = body.find(0)
        j = body.find(0, i + 1)
        if i < 0:
            return
        oids: list[int] = []
        if j < 0:  # cut by the decoder's keep limit: SQL text longer than that
            sql = body[i + 1 :].decode("utf-8", "ignore") + f"…[truncated {length - len(body)} bytes]"
        else:
            sql = body[i + 1 : j].decode("utf-8", "replace")
            try:
                count = _i16(body, j + 1)[0]
                if count > 0:
                    oids = _oids(body, j + 3, count)
            except struct.error:
                pass
        name = body[:i]
        self._seq += 1
        st = [sql, oids, None, None, self._seq, name.decode("utf-8", "replace") if name else ""]
        stmts = self._stmts
        prev = stmts.get(name)
        stmts[name] = st
        self._queue.append([_PARSE, now_us, st, name, prev])

    # -- server → client ------------------------------------------------------------------------

    def from_server(self, messages: list[Message], now_us: int) -> None:
        """Messages the backend sent (already forwarded)."""
        q = self._queue
        for typ, body, _length in messages:
            if typ == COMMAND_COMPLETE:
                if not q:
                    continue
                e = q[0]
                k = e[0]
                if k == _EXEC:
                    q.popleft()
                    self._exec_done(e, body, None, now_us)
                elif k == _QUERY:
                    if not e[6]:
                        self._simple_done(e, body, None, now_us)
                else:
                    e = self._realign(_EXEC)
                    if e is not None:
                        if e[0] == _EXEC:
                            q.popleft()
                            self._exec_done(e, body, None, now_us)
                        elif not e[6]:
                            self._simple_done(e, body, None, now_us)
            elif typ == READY:
                self._ready(body, now_us)
            elif typ == ROW_DESCRIPTION:  # as frequent as CommandComplete for queries
                if self._redactor.learns:
                    self._row_description(body)
                else:
                    self._described = None  # answered: must not be credited with a later one
            elif typ == PARSE_COMPLETE:
                if q and q[0][0] == _PARSE:
                    q.popleft()
                else:
                    e = self._realign(_PARSE)
                    if e is not None and e[0] == _PARSE:
                        q.popleft()
            elif typ == PORTAL_SUSPENDED:
                self._suspend(now_us)
            elif typ == ERROR:
                self._error(body, now_us)
            elif typ == PARAMETER_DESCRIPTION:
                e = q[0] if q and q[0][0] == _DESC else self._realign(_DESC)
                if e is not None and e[0] == _DESC:
                    q.popleft()
                    st = self._described = e[1]
                    if st is not None:
                        try:
                            st[_ST_OIDS] = parse_parameter_description(body)
                        except struct.error:
                            continue
                        st[_ST_PTYPES] = None
            elif typ == EMPTY_QUERY:  # no event
                e = q[0] if q and q[0][0] in (_EXEC, _QUERY) else self._realign(_EXEC)
                if e is not None and e[0] == _EXEC:
                    q.popleft()
                    p = e[2]
                    if p is not None and p[_P_START]:
                        self._abandon(p)
                self._last_done = now_us
            elif typ == PARAMETER_STATUS:
                name, value = parse_parameter_status(body)
                if name == b"application_name":
                    self.app = value.decode("utf-8", "replace")
                    self._rebase()
            elif typ == BACKEND_KEY:
                if len(body) >= 4:
                    self.backend_pid = parse_backend_key(body)[0]
                    self._rebase()
            elif typ == COPY_IN:
                self._copy_in()

    def _row_description(self, body: bytes) -> None:
        """A RowDescription may teach the redactor a table's column order (see ``Redactor.learn``)."""
        st = self._described
        if st is not None:  # after ParameterDescription: this answers that Describe, or follows its NoData
            self._described = None
        else:
            q = self._queue
            if not q:
                return
            e = q[0]
            if e[0] == _EXEC:  # Describe of the portal about to run
                st = e[2][_P_ST] if e[2] is not None else None
            elif e[0] == _QUERY and not e[4]:  # the first statement of a simple Query
                self._redactor.learn(self._orders, e[2], body)
                return
        if st is not None:
            self._redactor.learn(self._orders, st[_ST_SQL], body)

    def _realign(self, want: int) -> list[Any] | None:
        """The FIFO head is not what an answer expects: drop stale entries that cannot be answered
        any more (copy markers, Parse/Describe answered by messages we never saw), never a request
        that waits for ReadyForQuery. Returns the new head, or None."""
        q = self._queue
        while q:
            k = q[0][0]
            if k == want or (want == _EXEC and k == _QUERY):
                return q[0]
            if k <= _FUNC:
                return None
            q.popleft()
        return None

    def _ready(self, body: bytes, now_us: int) -> None:
        q = self._queue
        while q:
            if q.popleft()[0] <= _FUNC:
                break
        self.outstanding = self.outstanding - 1 if self.outstanding > 0 else 0
        if not q:
            self.outstanding = 0
        status = body[0] if body else TXN_IDLE
        self._status = status
        self._last_done = now_us
        if status == TXN_IDLE:
            if self._suspended:
                for p in list(self._suspended):
                    self._abandon(p)
            if self._in_txn:
                self._end(ROLLED_BACK if self._txn_err else (COMMITTED if self._explicit else AUTOCOMMIT),
                          now_us)

    def _suspend(self, now_us: int) -> None:
        """PortalSuspended: the Execute's row limit was reached; the portal run goes on later."""
        q = self._queue
        e = q[0] if q and q[0][0] == _EXEC else self._realign(_EXEC)
        if e is None or e[0] != _EXEC:
            return
        q.popleft()
        start = e[1] if e[1] > self._last_done else self._last_done
        self._last_done = now_us
        p = e[2]
        if p is not None:
            if not p[_P_START]:
                p[_P_START] = start
                self._suspended.append(p)
            p[_P_ROWS] += e[3]
            p[_P_LAST] = now_us

    def _copy_in(self) -> None:
        """CopyInResponse: Syncs sent before the client's CopyDone/CopyFail are ignored by the server."""
        q = self._queue
        i = 1
        while i < len(q):
            k = q[i][0]
            if k == _COPYEND:
                del q[i]
                return
            if k == _SYNC:
                del q[i]
                self.outstanding -= 1
                continue
            i += 1
        self._copy_wait = True

    def _error(self, body: bytes, now_us: int) -> None:
        fields = parse_fields(body)
        err = (fields.get("C", ""), fields.get("M", ""))
        self._copy_wait = False
        q = self._queue
        while q and q[0][0] == _COPYEND:
            q.popleft()
        if not q:
            self._txn_err = self._txn_err or self._in_txn
            return
        e = q[0]
        k = e[0]
        if k == _QUERY:  # the simple Query stops here; ReadyForQuery follows
            if not e[6]:
                e[6] = True
                if e[3] is None:
                    e[3] = sqltext.split(e[2])
                if e[4] < max(len(e[3]), 1):
                    self._simple_done(e, None, err, now_us)
                elif self._in_txn:  # after its last statement (e.g. FATAL): no statement to blame
                    self._txn_err = True
            return
        if k == _EXEC:
            q.popleft()
            self._exec_done(e, None, err, now_us)
        elif k == _PARSE:
            q.popleft()
            self._parse_failed(e, err, now_us)
        elif k == _DESC:
            q.popleft()
        elif k == _SYNC:  # the implicit COMMIT at Sync failed, or a Bind/Describe/Close before it
            if self._in_txn:
                self._txn_err = True
            return
        else:  # login or FunctionCall
            return
        if self._in_txn:
            self._txn_err = True
        # The backend now skips every extended-protocol message up to the next Sync.
        while q and q[0][0] != _SYNC:
            if q.popleft()[0] <= _FUNC:
                self.outstanding -= 1
        if not q:
            self._skip = True

    # -- statements ending ----------------------------------------------------------------------

    def _simple_done(self, e: list[Any], body: bytes | None, err: tuple[str, str] | None,
                     now_us: int) -> None:
        i = e[4]
        e[4] = i + 1
        start = e[1] if e[1] > self._last_done else self._last_done
        self._last_done = now_us
        if body is not None:
            tag, rows = parse_command_complete(body)
        else:
            tag = rows = None
        if not self._in_txn:
            self._begin()
        if self._sampled or (tag is not None and tag in _CONTROL_TAGS):  # else the text is not needed
            stmts = e[3]
            if stmts is None:
                stmts = e[3] = sqltext.split(e[2])
            # more answers than statements found: keep the whole text rather than guess
            sql = stmts[i] if i < len(stmts) else e[2]
            part = f"{i + 1}/{len(stmts)}" if len(stmts) > 1 else ""
        else:
            sql = part = ""
        self._finish(start, now_us, "simple", sql, None, None, tag, rows, err, e[5], part)

    def _exec_done(self, e: list[Any], body: bytes | None, err: tuple[str, str] | None,
                   now_us: int) -> None:
        start = e[1] if e[1] > self._last_done else self._last_done
        self._last_done = now_us
        p = e[2]
        tag = rows = None
        if body is not None:
            tag, rows = parse_command_complete(body)
        if p is None:
            self._finish(start, now_us, "extended", UNKNOWN_SQL, None, None, tag, rows, err, e[4])
            return
        if p[_P_START]:  # the last Execute of a portal fetched in several
            start = p[_P_START]
            if body is not None:
                rows = str(p[_P_ROWS] + (int(rows) if rows else 0))
            p[_P_START] = p[_P_ROWS] = 0
            self._suspended.remove(p)
        st = p[_P_ST]
        self._finish(start, now_us, "extended", st[_ST_SQL] if st else UNKNOWN_SQL, st, p, tag, rows, err, e[4])

    def _parse_failed(self, e: list[Any], err: tuple[str, str], now_us: int) -> None:
        start = e[1] if e[1] > self._last_done else self._last_done
        self._last_done = now_us
        st = e[2]
        stmts = self._stmts
        if stmts.get(e[3]) is st:  # the server kept the previous statement of that name, if any
            if e[4] is not None and e[3]:
                stmts[e[3]] = e[4]
            else:
                del stmts[e[3]]
        self._finish(start, now_us, "extended", st[_ST_SQL], st, None, None, None, err, e[2][_ST_SEQ])

    def _abandon(self, p: list[Any]) -> None:
        """A portal run stopped at PortalSuspended and never finished: closed, replaced or ended
        with its transaction. Its event has the rows fetched and no tag."""
        start = p[_P_START]
        rows = str(p[_P_ROWS])
        p[_P_START] = p[_P_ROWS] = 0
        if p in self._suspended:
            self._suspended.remove(p)
        st = p[_P_ST]
        self._finish(start, p[_P_LAST], "extended", st[_ST_SQL] if st else UNKNOWN_SQL, st, p, None, rows, None, 0)

    def _finish(self, start: int, end: int, proto: str, sql: str, st: list[Any] | None,
                portal: list[Any] | None, tag: str | None, rows: str | None,
                err: tuple[str, str] | None, seq: int, part: str = "") -> None:
        """A statement ended: its event joins its transaction; control statements act on state."""
        if not self._in_txn:
            self._begin()
        if self._suspended and tag in _ENDING_TAGS:
            # Ending the transaction destroys its portals: runs left at PortalSuspended end first.
            for p in list(self._suspended):
                self._abandon(p)
        if self._sampled:
            ev = self._base.copy()
            ev["ts"] = str(start)
            ev["dur_us"] = str(end - start)
            ev["proto"] = proto
            hidden: Hidden
            if st is not None:
                red = st[_ST_RED]
                if red is None:
                    red = self._redact(sql, True)
                    if not isinstance(red, Provisional):  # one worked out from learned orders may change
                        st[_ST_RED] = red
                text, hidden = red
                if st[_ST_NAME]:
                    ev["stmt"] = st[_ST_NAME]
            else:
                text, hidden = self._redact(sql)
            ev["sql"] = text
            if part:
                ev["part"] = part
            if portal is not None and self._want_params:
                values = _params.bind_params(portal[_P_BODY], portal[_P_LEN], portal[_P_POS],
                                             st[_ST_OIDS] if st is not None else (), self._max_param,
                                             hidden)
                if values != "[]":
                    ev["params"] = values
            if st is not None:
                ptypes = st[_ST_PTYPES]
                if ptypes is None:
                    oids = st[_ST_OIDS]
                    ptypes = st[_ST_PTYPES] = "[" + ",".join(map(str, oids)) + "]" if oids else ""
                if ptypes:
                    ev["ptypes"] = ptypes
            ev["txid"] = self._txid_s
            if tag:
                ev["tag"] = tag
            if rows is not None:
                ev["rows"] = rows
            if err is not None:
                ev["err"] = err[0]
                # PostgreSQL quotes input values in messages (invalid input syntax …: "value"):
                # when redaction hid anything, a hidden value must not come back through errmsg.
                ev["errmsg"] = _scrub(err[1], text) if hidden or text != sql else err[1]
            if self._open:
                ev["txn"] = OPEN
                self._open += 1
                ev["n"] = str(self._open)
                self._emit(ev)  # type: ignore[misc]
            else:
                held = self._held
                held.append(ev)
                if len(held) > self._max_held:
                    self._spill()
        if err is not None:
            self._txn_err = True
        if proto == "extended":
            self._ext = True
        if self._orders and tag is not None and tag.startswith(FORGET_TAGS):
            self._orders.clear()  # DDL, a search_path or a rollback may change what a table's columns are
        if tag is not None and tag in _CONTROL_TAGS:
            self._control(tag, sql, seq, end)

    def _redact(self, sql: str, remember: bool = False) -> tuple[str, Hidden]:
        text, hidden = red = self._redactor(sql, remember, self._orders)
        if len(text) > self._max_sql:
            text = sqlfit.fit(text, self._max_sql)  # long lists shortened first: the shape stays one
            red = red.__class__((text, hidden))
        return red

    # -- transactions ----------------------------------------------------------------------------

    def _begin(self) -> None:
        self._in_txn = True
        self._txid += 1
        self._txid_s = str(self._txid)
        rate = self._rate
        self._sampled = rate >= 1.0 or (rate > 0.0 and random.random() < rate)
        self._txn_err = False
        self._explicit = False
        self._ext = False
        self._open = 0
        if self._savepoints:
            self._savepoints = []
        if self._undone:
            self._undone = []

    def _spill(self) -> None:
        """Too many statements held: send them now with txn=open; a txn_end marker follows."""
        emit = self._emit
        for n, ev in enumerate(self._held, 1):
            if "txn" not in ev:
                ev["txn"] = OPEN
            ev["n"] = str(n)
            emit(ev)  # type: ignore[misc]
        self._open = len(self._held)
        self._held = []

    def _end(self, outcome: str, now_us: int) -> None:
        if self._sampled:
            emit = self._emit
            if self._open:
                marker = self._base.copy()
                marker["kind"] = KIND_TXN_END
                marker["ts"] = str(now_us)
                marker["txid"] = self._txid_s
                marker["txn"] = outcome
                marker["stmts"] = str(self._open)
                if self._undone:
                    marker["undone"] = ",".join(self._undone)
                emit(marker)  # type: ignore[misc]
            else:
                held = self._held
                for ev in held:
                    if "txn" not in ev:
                        ev["txn"] = outcome
                    emit(ev)  # type: ignore[misc]
                held.clear()
        self._in_txn = False

    def _control(self, tag: str, sql: str, seq: int, now_us: int) -> None:
        """Transaction control and statement-lifetime commands seen through their command tags."""
        if tag == "COMMIT":
            self._end(COMMITTED, now_us)
        elif tag == "ROLLBACK":
            words = _idents(sql)
            if "to" in words:  # ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name
                self._rollback_to(words[-1])
            else:
                self._end(ROLLED_BACK, now_us)
        elif tag == "PREPARE TRANSACTION":
            self._end(PREPARED, now_us)
        elif tag == "BEGIN" or tag == "START TRANSACTION":
            self._explicit = True
        elif tag == "SAVEPOINT":
            words = _idents(sql)
            if words:
                self._savepoints.append((words[-1], self._open + len(self._held)))
        elif tag == "RELEASE":
            words = _idents(sql)
            if words:
                sp = self._savepoints
                for i in range(len(sp) - 1, -1, -1):
                    if sp[i][0] == words[-1]:
                        del sp[i:]
                        break
        elif tag == "DEALLOCATE":
            words = _idents(sql)
            if words and words[-1] not in ("deallocate", "prepare"):
                name = words[-1].encode()
                st = self._stmts.get(name)
                if st is not None and st[_ST_SEQ] <= seq:
                    del self._stmts[name]
        else:  # DISCARD ALL, DEALLOCATE ALL: statements parsed before this one are gone
            self._stmts = {k: v for k, v in self._stmts.items() if v[_ST_SEQ] > seq}
            if tag == "DISCARD ALL":
                self._portals.clear()

    def _rollback_to(self, name: str) -> None:
        sp = self._savepoints
        for i in range(len(sp) - 1, -1, -1):
            if sp[i][0] == name:
                mark = sp[i][1]  # statements of the transaction before the savepoint
                del sp[i + 1 :]
                # Work after the savepoint is undone. The ROLLBACK TO statements themselves (this one
                # is the last event) undo nothing and share the transaction's outcome. Statements
                # already sent with txn=open cannot be re-marked: their numbers go to txn_end's undone.
                if self._open:
                    if mark + 1 < self._open:
                        self._undone.append(f"{mark + 1}-{self._open - 1}")
                else:
                    for ev in self._held[mark:-1]:
                        if ev.get("tag") != "ROLLBACK":
                            ev["txn"] = ROLLED_BACK
                break
        self._txn_err = False  # the transaction is usable again

    # -- the end ---------------------------------------------------------------------------------

    def close(self, now_us: int) -> None:
        """The connection ended; nothing more will arrive. An open transaction is rolled back by the
        server, so its held events go out as rolled_back. Statements still running make no event."""
        if self.closed:
            return
        self.closed = True
        for p in list(self._suspended):
            self._abandon(p)
        if self._in_txn:
            outcome = ROLLED_BACK
            if self._status == TXN_IDLE and not (self._explicit or self._txn_err or self._ext):
                # Simple Queries: the server commits a Query's implicit transaction before its last
                # CommandComplete, so a fully answered Query is committed even without its ReadyForQuery.
                q = self._queue
                head = q[0] if q else None
                if head is None or (head[0] == _QUERY and head[4] >= len(head[3] or sqltext.split(head[2]))):
                    outcome = AUTOCOMMIT
            self._end(outcome, now_us)
        self._queue.clear()
        self.outstanding = 0
        self._stmts.clear()
        self._portals.clear()
