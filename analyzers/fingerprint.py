"""Cheap statement normalisation: one regex pass per distinct SQL text, then a dict hit.

Literals (strings, numbers, NULL/TRUE/FALSE in value positions, typed literals) and bound
parameters ($n) all become numbered placeholders, so `WHERE id = 5` sent on the simple protocol
and `WHERE id = $1` sent on the extended one share a fingerprint. IN-lists and multi-row VALUES
fold to one element, whatever their length (an IN-list's elements may each carry the same cast).
Comments are dropped from the text; sqlcommenter comments (`/*key='value',…*/`) become labels. The
slot table remembers, for each placeholder, either the literal's value or which bound parameter
feeds it, so values can be recovered per event without re-parsing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote

MARK = "\x01"  # placeholder while normalising; never valid in SQL text

_NUM = r"(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
# Order matters: comments and quoted things first so their insides are never tokenised. The leading
# lookahead lets the engine skip, at C speed, every position that cannot start a token (5x faster).
_TOKENS = re.compile(
    r"""(?=[-/"'$\d.])(?:
     (?P<c>/\*.*?\*/|--[^\n]*)
    |(?P<q>"[^"]*(?:""[^"]*)*")
    |(?P<e>(?<=[Ee])(?<![\w$][Ee])'[^'\\]*(?:(?:\\.|'')[^'\\]*)*')
    |(?P<s>'[^']*(?:''[^']*)*')
    |(?P<d>\$(?P<tag>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?\$(?P=tag)\$)
    |(?P<p>\$\d+)
    |(?P<n>-\s*NUM(?![\w$.])|(?<![\w$.])NUM(?![\w$.]))
    )""".replace("NUM", _NUM),
    re.S | re.X,
)
_PREFIXED = re.compile(r"(?<![\w$])(?:[EeBbXxNn]|[Uu]&)\x01")
_KEYWORDS = re.compile(r"(?i)(?<![\w$.])(null|true|false)(?![\w$])")
_TYPED = re.compile(r"(?i)(?<![\w$])(date|time|timestamp|timestamptz|interval)\s+\x01")
_PREV_WORD = re.compile(r"([A-Za-z_][\w$]*)\s*$")
# After these words a '-' is a sign, not a subtraction.
_SIGN_AFTER = frozenset({
    "select", "where", "and", "or", "not", "then", "else", "when", "return", "by", "limit", "offset", "in",
    "values", "set", "is", "like", "between", "case", "having", "on", "as",
})
_KEEP_KEYWORD_AFTER = frozenset({"is", "not", "default", "set", "distinct"})
_CAST = r"(?:::[A-Za-z_][\w.]*(?:\[\])?)?"  # "$1::uuid": drivers cast each element (SQLAlchemy on asyncpg)
_FOLD_IN = re.compile(
    r"(?i)(?<![\w$])(IN\s*)\(\s*\x01(?P<c1>CAST)(?:\s*,\s*\x01(?P=c1))+\s*\)"
    r"|(ARRAY\s*)\[\s*\x01(?P<c2>CAST)(?:\s*,\s*\x01(?P=c2))+\s*\]".replace("CAST", _CAST))
_CAST_ITEMS = re.compile(r"\x01::[A-Za-z_][\w.]*(?:\[\])?\s*,\s*\x01")
_FOLD_VALUES = re.compile(
    r"(?i)(?<![\w$])(VALUES\s*)(\((?:[^()]|\([^()]*\))*\))((?:\s*,\s*\2)+)"
)
_ROW_BREAK = re.compile(r"\)\s+,\s*\(")  # rows apart as "(…) , (…)" (a comment between them leaves that)
_COMMENTER = re.compile(r"([\w.\-]+)\s*=\s*'((?:[^'\\]|\\.)*)'")


@dataclass(slots=True)
class Slot:
    """Where a placeholder's value comes from: a literal in the text or bound parameter `param`."""

    param: int = -1  # 0-based index into the event's params, or -1 for a literal
    value: Any = None  # the literal's value (str, int, Decimal, bool, None)
    items: list[Slot] | None = None  # folded IN-list / ARRAY[…]: one slot per element

    def resolve(self, params: list[Any] | None) -> Any:
        if self.items is not None:
            return [s.resolve(params) for s in self.items]
        if self.param < 0:
            return self.value
        if params is None or self.param >= len(params):
            return None
        return params[self.param]


@dataclass(slots=True)
class MultiRow:
    """A folded multi-row VALUES: the text keeps row 1 (slots `start`…`start+width-1`)."""

    start: int
    width: int
    rows: list[list[Slot]]


@dataclass(slots=True)
class Normalized:
    """One distinct statement text, normalised."""

    text: str  # placeholders as $1…$n in order of appearance, folded, whitespace collapsed
    fp: str  # 16 hex chars, stable across processes and releases of this module
    slots: list[Slot]
    multirow: MultiRow | None = None
    comment: dict[str, str] = field(default_factory=dict)
    stacked: bool = False  # more than one statement in the text

    def values(self, params: list[Any] | None) -> list[Any]:
        """Every slot's value for one execution (a folded IN-list gives a list)."""
        return [s.resolve(params) for s in self.slots]

    def rows(self, params: list[Any] | None) -> list[list[Any]]:
        """Slot values per VALUES row: one list for ordinary statements, one per row when folded."""
        base = self.values(params)
        mr = self.multirow
        if mr is None:
            return [base]
        out = []
        for row in mr.rows:
            vals = list(base)
            vals[mr.start:mr.start + mr.width] = [s.resolve(params) for s in row]
            out.append(vals)
        return out


def _unescape_e(tok: str) -> str:
    body = tok[1:-1].replace("''", "'")
    if "\\" not in body:
        return body
    out = []
    i = 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(simple.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(tok: str) -> int | Decimal:
    if tok.isdigit():
        return int(tok)
    tok = "".join(tok.split())
    try:
        return int(tok)
    except ValueError:
        try:
            return Decimal(tok)
        except InvalidOperation:
            return Decimal(0)


def parse_commenter(body: str) -> dict[str, str]:
    """sqlcommenter: `key='url-encoded value'` pairs separated by commas."""
    return {unquote(k): unquote(v.replace("\\'", "'")) for k, v in _COMMENTER.findall(body)}


def normalize(sql: str) -> Normalized:
    """Normalise one statement text (no caching here; see `Normalizer`)."""
    slots: list[Slot] = []
    comment: dict[str, str] = {}
    prefixed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal prefixed
        kind = m.lastgroup
        tok = m.group(0)
        if kind == "s":
            start = m.start()
            if start and sql[start - 1] in "BbXxNn&" and _PREFIXED.match(sql, start - 1) is None:
                prefixed = True
                if sql[start - 1] in "BbXx":
                    slots.append(Slot(value=sql[start - 1] + tok))
                    return MARK
            slots.append(Slot(value=tok[1:-1].replace("''", "'")))
            return MARK
        if kind == "n":
            if tok[0] == "-":
                start = m.start()
                before = sql[max(0, start - 40):start].rstrip()
                last = before[-1:]
                if last and (last.isalnum() or last in "_)]\"'$"):
                    word = _PREV_WORD.search(before)
                    if not (word and word.group(1).lower() in _SIGN_AFTER):
                        slots.append(Slot(value=_number(tok[1:])))
                        return "- " + MARK
            slots.append(Slot(value=_number(tok)))
            return MARK
        if kind == "p":
            slots.append(Slot(param=int(tok[1:]) - 1))
            return MARK
        if kind == "c":
            if tok[1] == "*" and "='" in tok:
                comment.update(parse_commenter(tok[2:-2]))
            return " "
        if kind == "q":
            return tok
        if kind == "e":
            prefixed = True
            slots.append(Slot(value=_unescape_e(tok)))
            return MARK
        # dollar-quoted ("d" or its inner group "tag")
        tag = m.group("tag")
        slots.append(Slot(value=tok[len(tag) + 2:-(len(tag) + 2)]))
        return MARK

    text = " ".join(_TOKENS.sub(sub, sql).split())  # str.split: ~10x faster than a \\s+ regex
    if prefixed:
        text = _PREFIXED.sub(MARK, text)
    low = text.lower()
    if "null" in low or "true" in low or "false" in low:
        text, slots = _keywords(text, slots)
    if MARK in text and ("date" in low or "time" in low or "interval" in low):
        text = _TYPED.sub(lambda m: MARK + "::" + m.group(1).lower(), text)
    multirow = None
    if MARK + ", " + MARK in text or MARK + "," + MARK in text or ("::" in text and _CAST_ITEMS.search(text)):
        text, slots = _fold_in(text, slots)
    if "values" in low and ("), (" in text or "),(" in text or _ROW_BREAK.search(text)):
        text, slots, multirow = _fold_values(text, slots)
    text = text.rstrip("; ")
    stacked = ";" in text and _has_stacked(text)
    if MARK in text:
        parts = text.split(MARK)
        buf = [parts[0]]
        for i, part in enumerate(parts[1:], 1):
            buf.append(f"${i}")
            buf.append(part)
        text = "".join(buf)
    key = "".join(text.split()).lower()
    fp = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return Normalized(text, fp, slots, multirow, comment, stacked)


def _keywords(text: str, slots: list[Slot]) -> tuple[str, list[Slot]]:
    """NULL / TRUE / FALSE are values, except after IS / NOT / DEFAULT / SET, where they are syntax."""
    out: list[str] = []
    new: list[Slot] = []
    pos = si = 0
    for m in _KEYWORDS.finditer(text):
        s, e = m.span()
        word = _PREV_WORD.search(text, max(0, s - 40), s)
        if word and word.group(1).lower() in _KEEP_KEYWORD_AFTER:
            continue
        n = text.count(MARK, pos, s)
        out.append(text[pos:s])
        out.append(MARK)
        new.extend(slots[si:si + n])
        si += n
        low = m.group(1).lower()
        new.append(Slot(value=None if low == "null" else low == "true"))
        pos = e
    if not out:
        return text, slots
    out.append(text[pos:])
    new.extend(slots[si:])
    return "".join(out), new


def _has_stacked(text: str) -> bool:
    """A ';' outside quoted identifiers that is followed by more text (literals are already gone)."""
    cleaned = re.sub(r'"(?:[^"]|"")*"', "", text)
    _head, _, tail = cleaned.partition(";")
    return bool(tail.strip(" ;"))


def _fold_in(text: str, slots: list[Slot]) -> tuple[str, list[Slot]]:
    out: list[str] = []
    new: list[Slot] = []
    pos = si = 0
    for m in _FOLD_IN.finditer(text):
        s, e = m.span()
        n = text.count(MARK, pos, s)
        out.append(text[pos:s])
        new.extend(slots[si:si + n])
        si += n
        k = text.count(MARK, s, e)
        new.append(Slot(items=slots[si:si + k]))
        si += k
        if m.group(1) is not None:
            out.append(f"{m.group(1)}({MARK}{m.group('c1')})")
        else:
            out.append(f"{m.group(3)}[{MARK}{m.group('c2')}]")
        pos = e
    if not out:
        return text, slots
    out.append(text[pos:])
    new.extend(slots[si:])
    return "".join(out), new


def _fold_values(text: str, slots: list[Slot]) -> tuple[str, list[Slot], MultiRow | None]:
    m = _FOLD_VALUES.search(text)
    if m is None:
        return text, slots, None
    s, e = m.span()
    before = text.count(MARK, 0, s)
    width = m.group(2).count(MARK)
    total = text.count(MARK, s, e)
    if width == 0:
        rows: list[list[Slot]] = [[] for _ in range(1 + m.group(3).count(m.group(2)))]
    else:
        group = slots[before:before + total]
        rows = [group[i:i + width] for i in range(0, total, width)]
    new_text = text[:s] + m.group(1) + m.group(2) + text[e:]
    new_slots = slots[:before + width] + slots[before + total:]
    return new_text, new_slots, MultiRow(before, width, rows)


# Simple-protocol texts differ mostly in their literals. `_LITERALS` splits a text into its skeleton
# and its literals (quoted strings and numbers, with exactly the token rules of `_TOKENS`); texts
# with nothing else `_TOKENS` cares about (comments, quoted identifiers, $, backslashes, '') reuse
# one template per skeleton instead of the full regex pass with its Python callback per token.
_LITERALS = re.compile(r"(?=['\d.])(?:'([^']*)'|(?<![\w$.])(NUM)(?![\w$.]))".replace("NUM", _NUM))
_UNTEMPLATED = ("--", "/*", '"', "$", "\\", "''", MARK)  # MARK also joins the skeleton key
_TAG_BASE = 1_000_000_000
Spec = tuple  # ("s"|"n"|"-", literal index) or ("i", [Spec, …]) for a folded list


class _Template:
    """How one skeleton normalises: the shared text and fingerprint, and where each literal lands."""

    __slots__ = ("fp", "kinds", "multirow", "slots", "stacked", "text")

    def __init__(self, kinds: tuple[type, ...], norm: Normalized, slots: list[Spec],
                 multirow: tuple[int, int, list[list[Spec]]] | None) -> None:
        self.kinds = kinds  # per literal: str for a number, NoneType for a string (the split's number group)
        self.text = norm.text
        self.fp = norm.fp
        self.stacked = norm.stacked
        self.slots = slots
        self.multirow = multirow

    def build(self, strs: list[str | None], nums: list[str | None]) -> Normalized:
        """This skeleton's result for one text's literals (as `_LITERALS.split` gives them)."""
        return Normalized(self.text, self.fp, *self.parts(strs, nums), {}, self.stacked)

    def parts(self, strs: list[str | None], nums: list[str | None]) -> tuple[list[Slot], MultiRow | None]:
        """The slot table and folded rows of one text's literals."""
        slots = self._make(self.slots, strs, nums)
        multirow = None
        if self.multirow is not None:
            start, width, rows = self.multirow
            built = [self._make(row, strs, nums) for row in rows]
            slots[start:start + width] = built[0]
            multirow = MultiRow(start, width, built)
        return slots, multirow

    @classmethod
    def _make(cls, specs: list[Spec], strs: list[str | None], nums: list[str | None]) -> list[Slot]:
        out = []
        for kind, arg in specs:
            if kind == "s":
                out.append(Slot(-1, strs[arg]))
            elif kind == "n":
                tok = nums[arg]
                out.append(Slot(-1, int(tok) if tok.isdigit() else _number(tok)))
            elif kind == "-":
                out.append(Slot(-1, _number("-" + nums[arg])))
            else:
                out.append(Slot(items=cls._make(arg, strs, nums)))
        return out


_SLOTS = Normalized.slots  # the slot descriptors _Deferred stores into once it has built the table
_MULTIROW = Normalized.multirow


class _Deferred(Normalized):
    """A templated text whose slot table is built on first use. Only business rules read values, and most
    simple-protocol texts are not business statements, so building every table would be paid for nothing."""

    __slots__ = ("_lits",)

    def __init__(self, tpl: _Template, strs: list[str | None], nums: list[str | None]) -> None:
        self.text = tpl.text
        self.fp = tpl.fp
        self.comment = {}
        self.stacked = tpl.stacked
        self._lits: tuple[_Template, list[str | None], list[str | None]] | None = (tpl, strs, nums)

    def _build(self) -> None:
        if self._lits is not None:
            tpl, strs, nums = self._lits
            self._lits = None
            slots, multirow = tpl.parts(strs, nums)
            _SLOTS.__set__(self, slots)
            _MULTIROW.__set__(self, multirow)

    @property  # type: ignore[override]
    def slots(self) -> list[Slot]:
        self._build()
        return _SLOTS.__get__(self)

    @property  # type: ignore[override]
    def multirow(self) -> MultiRow | None:
        self._build()
        return _MULTIROW.__get__(self)

    def __eq__(self, other: object) -> bool:
        """Equal to the full pass's result (the dataclass __eq__ wants the exact same class)."""
        if not isinstance(other, Normalized):
            return NotImplemented
        return (self.text, self.fp, self.slots, self.multirow, self.comment, self.stacked) == \
            (other.text, other.fp, other.slots, other.multirow, other.comment, other.stacked)

    __hash__ = None  # type: ignore[assignment]


def _template(texts: list[str], kinds: tuple[type, ...]) -> _Template | None:
    """Normalise a probe text (each literal replaced by a unique tag) and map the tags back; None when
    a literal's value does not land as itself or its negation (NULL keywords, B'…' strings, …)."""
    if any(t.strip() == "-" for t in texts[1:-1]):
        return None  # "5 - 3" vs "5. -3": the sign rule looks at the previous literal's last character
    buf = [texts[0]]
    for i, kind in enumerate(kinds):
        buf.append(str(_TAG_BASE + i) if kind is str else f"'\x03{i}'")
        buf.append(texts[i + 1])
    probe = normalize("".join(buf))
    if probe.comment:
        return None

    def spec(slot: Slot) -> Spec | None:
        if slot.items is not None:
            items = [spec(s) for s in slot.items]
            return None if None in items else ("i", items)
        v = slot.value
        if slot.param >= 0:
            return None
        if type(v) is str and v[:1] == "\x03" and v[1:].isdigit() and int(v[1:]) < len(kinds) \
                and kinds[int(v[1:])] is not str:
            return ("s", int(v[1:]))
        if type(v) is int and 0 <= abs(v) - _TAG_BASE < len(kinds) and kinds[abs(v) - _TAG_BASE] is str:
            return ("n" if v > 0 else "-", abs(v) - _TAG_BASE)
        return None

    slots = [spec(s) for s in probe.slots]
    if None in slots:
        return None
    multirow = None
    if probe.multirow is not None:
        mr = probe.multirow
        rows = [[spec(s) for s in row] for row in mr.rows]
        if any(None in row for row in rows):
            return None
        multirow = (mr.start, mr.width, rows)
    return _Template(kinds, probe, slots, multirow)


class Normalizer:
    """`normalize` with a bounded cache keyed by the exact SQL text.

    Extended-protocol texts repeat verbatim, so they cost one dict lookup; simple-protocol texts
    with literals are mostly unique: they go through a per-skeleton template (see `_LITERALS`), and
    only texts no template covers pay the full regex pass. Caches are cleared when full rather than
    kept in LRU order: cheaper per hit, and the hot texts return within a few batches.
    """

    def __init__(self, size: int = 20000, templates: int = 5000) -> None:
        self.size = size
        self.cache: dict[str, Normalized] = {}
        self.templates: dict[str, _Template | None] = {}
        self.template_size = templates
        self.misses = 0

    def __call__(self, sql: str) -> Normalized:
        hit = self.cache.get(sql)
        if hit is not None:
            return hit
        self.misses += 1
        norm = self._templated(sql) or normalize(sql)
        if len(self.cache) >= self.size:
            self.cache.clear()
        self.cache[sql] = norm
        return norm

    def _templated(self, sql: str) -> Normalized | None:
        for bad in _UNTEMPLATED:
            if bad in sql:
                return None
        parts = _LITERALS.split(sql)
        if len(parts) == 1:
            return None
        texts = parts[0::3]
        strs = parts[1::3]
        nums = parts[2::3]
        key = "\x01".join(texts)
        kinds = tuple(map(type, nums))
        tpl = self.templates.get(key, False)
        if tpl is not False:
            if tpl is None or tpl.kinds != kinds:
                return None
            return _Deferred(tpl, strs, nums)
        tpl = _template(texts, kinds)
        if tpl is not None and tpl.build(strs, nums) != normalize(sql):
            tpl = None  # belt and braces: the template must reproduce the full pass on its first text
        if len(self.templates) >= self.template_size:
            self.templates.clear()
        self.templates[key] = tpl
        return None
