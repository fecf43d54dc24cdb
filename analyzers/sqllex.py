"""Split SQL text into tokens the way PostgreSQL's scanner does, so a check can tell a quote that ends a
literal from one that sits inside it (`'Smith'';SELECT PG_SLEEP(5)--'` is one string literal).

Rules followed (standard_conforming_strings on, the default since PostgreSQL 9.1):
- '…' doubles a quote to escape it ('') and backslashes are ordinary characters;
- E'…' also escapes with a backslash (\\' and \\\\); U&'…', N'…', B'…', X'…' are literals with '' escapes;
- $tag$…$tag$ is a literal whose body is taken as is ($$…$$ too); $1 is a parameter;
- "…" and U&"…" are identifiers with "" escapes;
- -- runs to the end of the line; /* … */ nests (/* a /* b */ c */ is one comment);
- an operator is a run of + - * / < > = ~ ! @ # % ^ & | ` ? that stops before -- or /*, and a multi-
  character operator only ends in + or - if it holds one of ~ ! @ # % ^ & | ` ? (so =-1 is =, -, 1).

Something left open (a quote, a dollar quote, a block comment) runs to the end of the text and is marked
unterminated: the server would reject the text, which is what a syntax probe does.

Pure and cheap: one compiled pattern walks the text; only nested comments and odd operators take a
Python detour.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# kinds
STR = "str"  # any string literal: '…', E'…', U&'…', N'…', B'…', X'…', $tag$…$tag$
NUM = "num"
PARAM = "param"  # $1
WORD = "word"  # keyword or unquoted identifier (case-insensitive)
IDENT = "ident"  # "quoted identifier"
OP = "op"
PUNCT = "punct"  # ( ) [ ] , ; : . ::
COMMENT = "comment"  # -- … or /* … */
OPEN = "open"  # an unterminated literal, identifier or comment: the rest of the text


class Token(NamedTuple):
    kind: str
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def low(self) -> str:
        return self.text.lower()


_OPCHARS = "+-*/<>=~!@#%^&|`?"
_OP_SPECIAL = frozenset("~!@#%^&|`?")
_PATTERN = re.compile(
    r"""\s*(?:
     (?P<word>(?![EeNnBbXx]'|[Uu]&['"])[^\W\d][\w$]*)
    |(?P<punct>::|[()\[\],;:]|\.(?!\d))
    |(?P<num>0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
        |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
    |(?P<str>(?:[Uu]&|[NnBbXx])?'[^']*(?:''[^']*)*')
    |(?P<estr>[Ee]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*')
    |(?P<line>--[^\n]*)
    |(?P<block>/\*[^*/]*(?:(?:\*(?!/)|/(?!\*))[^*/]*)*\*/)
    |(?P<nest>/\*)
    |(?P<op>(?:[+*<>=~!@\#%^&|`?]|-(?!-)|/(?!\*))+)
    |(?P<param>\$\d+)
    |(?P<ident>(?:[Uu]&)?"[^"]*(?:""[^"]*)*")
    |(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$)
    |(?P<open>(?:[Ee]|[Uu]&|[NnBbXx])?['"].*|\$(?:[^\W\d]\w*)?\$.*)
    |(?P<other>\S)
    )""",
    re.S | re.X,
)
_KIND = {"line": COMMENT, "block": COMMENT, "nest": COMMENT, "estr": STR, "str": STR, "ident": IDENT, "dollar": STR,
         "tag": STR, "open": OPEN, "param": PARAM, "num": NUM, "word": WORD, "op": OP, "punct": PUNCT, "other": OP}
_KINDS = [""] * (_PATTERN.groups + 1)
_NAMES = [""] * (_PATTERN.groups + 1)
for _name, _index in _PATTERN.groupindex.items():
    _KINDS[_index] = _KIND[_name]
    _NAMES[_index] = _name


def tokenize(sql: str) -> list[Token]:
    """The tokens of `sql`, whitespace left out; every character but whitespace is in exactly one token."""
    out: list[Token] = []
    append = out.append
    pos = 0
    n = len(sql)
    kinds = _KINDS
    names = _NAMES
    new = tuple.__new__
    while pos < n:
        for m in _PATTERN.finditer(sql, pos):
            index = m.lastindex
            start, end = m.span(index)
            kind = kinds[index]
            if kind is COMMENT and names[index] == "nest":
                end = _nested_end(sql, start)
                append(Token(COMMENT if end > 0 else OPEN, sql[start:end if end > 0 else n], start))
                pos = end if end > 0 else n
                break
            text = sql[start:end]
            if kind is OP and len(text) > 1 and text[-1] in "+-" and _OP_SPECIAL.isdisjoint(text):
                text = _trim_operator(text)
                append(Token(OP, text, start))
                pos = start + len(text)
                break
            append(new(Token, (kind, text, start)))
        else:
            return out
    return out


def _nested_end(sql: str, start: int) -> int:
    """End of the block comment opened at `start`, counting nested /* */; -1 when it never closes."""
    depth = 0
    i = start
    n = len(sql)
    while i < n - 1:
        two = sql[i:i + 2]
        if two == "/*":
            depth += 1
            i += 2
        elif two == "*/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _trim_operator(text: str) -> str:
    """A multi-character operator cannot end in + or - unless it holds one of ~!@#%^&|`?: drop them."""
    while len(text) > 1 and text[-1] in "+-":
        text = text[:-1]
    return text


def is_terminated(tokens: list[Token]) -> bool:
    """Whether every literal, identifier and comment that the text opens is closed."""
    return not tokens or tokens[-1].kind != OPEN


def string_value(tok: Token) -> str:
    """The characters a string literal token stands for (escapes undone; U& escapes left as written)."""
    text = tok.text
    if text.startswith("$"):
        tag_end = text.index("$", 1) + 1
        return text[tag_end:-tag_end]
    head = text[0]
    if head in "Ee":
        return _unescape(text[2:-1].replace("''", "'"))
    if head in "Uu":
        return text[3:-1].replace("''", "'")
    if head in "NnBbXx":
        return text[2:-1].replace("''", "'")
    return text[1:-1].replace("''", "'")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _unescape(body: str) -> str:
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
