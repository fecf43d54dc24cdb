"""The commit's op language, declared once: what each opcode's arguments are and which of them name keys.

A batch's writes reach commit.lua as one flat list of strings: an opcode, its fixed arguments, then, for
some ops, a tail whose length one of the fixed arguments counts. `OPS` is the only place that says how long
each op is and where its keys are:
- commit.lua holds one handler section per op; `render` makes them the branches of the script's dispatcher
  and writes each branch's step to the next op from the declaration (the tail's bounds too), so a handler
  reads its arguments and never counts them. Rendering fails unless handlers and declaration name the same
  ops. The steps are constants in the script, as hand-written ones would be: the dispatcher costs Redis
  nothing for being generated;
- `Writes` (atomic.py) finds the keys a sharded commit declares as KEYS by it: `KEY_OFFSETS` as it keeps an
  op, `keys_in` to walk a flat list;
- `parse` checks a list against it (the tests check what `Writes` emits).

Layouts are a wire format: parked writes are stored as such lists and replayed by whatever release of the
script is running when their transaction ends. An op's layout therefore never changes; a new layout is a
new opcode (as `GN` beside `G`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    """One opcode. args: the fixed arguments after the opcode, by name; keys: those that name Redis keys;
    count: the argument that counts the tail ("": no tail), in items of `per` strings; nested: the tail is
    child ops, which the op runs (or parks) when its condition holds."""

    code: str
    args: tuple[str, ...]
    keys: tuple[str, ...] = ()
    count: str = ""
    per: int = 1
    nested: bool = False

    @property
    def key_offsets(self) -> tuple[int, ...]:
        """Where the keys are, counted from the opcode (the first argument is 1)."""
        return tuple(self.args.index(k) + 1 for k in self.keys)

    @property
    def count_offset(self) -> int:
        """Where the tail's count is, counted from the opcode; 0: the op has no tail."""
        return self.args.index(self.count) + 1 if self.count else 0


def _nested(code: str, *args: str, keys: tuple[str, ...]) -> Op:
    return Op(code, (*args, "n"), keys, count="n", nested=True)


# In the order the script's dispatcher tries them: the aggregates, the bulk of a batch's ops, first.
OPS: tuple[Op, ...] = (
    Op("H", ("key", "field", "by"), ("key",)),  # HINCRBY
    Op("Z", ("key", "member", "by"), ("key",)),  # ZINCRBY
    Op("MAX", ("key", "field", "value"), ("key",)),  # HSET if higher (or absent)
    Op("MIN", ("key", "field", "value"), ("key",)),  # HSET if lower (or absent)
    Op("HF", ("key", "field", "by"), ("key",)),  # HINCRBYFLOAT
    Op("NX", ("key", "field", "value"), ("key",)),  # HSETNX
    Op("HS", ("key", "field", "value"), ("key",)),  # HSET
    Op("S", ("key", "member"), ("key",)),  # SADD
    Op("ZGT", ("key", "member", "score"), ("key",)),  # ZADD GT: a member's newest time
    # a fingerprint's row of one db|app|user: `calls:total_us:rows:errors:max_us` added to (max compared)
    Op("UROW", ("key", "field", "calls", "us", "rows", "errors", "max"), ("key",)),
    # a minute of a ring of `slots`: calls, µs and errors added to `minute:calls:us:errors` (reset for a new minute)
    Op("TS", ("key", "slots", "minute", "calls", "us", "errors"), ("key",)),
    Op("D", ("set", "hash", "field", "member"), ("set", "hash")),  # SADD, then the set's size into the hash
    Op("DS", ("set", "hash", "field", "n"), ("set", "hash"), count="n"),  # D of n members
    Op("E", ("key", "seconds"), ("key",)),  # EXPIRE
    Op("EA", ("key", "at"), ("key",)),  # EXPIREAT
    # a fingerprint seen in the batch: its n <db>|<app> members, then the newest second of each
    Op("L", ("last", "fp", "ts", "description", "members", "entries", "n"),
       ("last", "description", "members", "entries"), count="n", per=2),
    Op("X", ("stream", "maxlen", "n"), ("stream",), count="n"),  # XADD of n strings (field, value, …)
    # n × (score, member) into a sorted set that keeps only its `keep` highest scores (the slowest samples)
    Op("ZKEEP", ("key", "keep", "n"), ("key",), count="n", per=2),
    # n members pushed to the head of a list that keeps its `keep` newest; `index` scores `member` `at` (ZADD GT)
    Op("LKEEP", ("key", "keep", "index", "member", "at", "n"), ("key", "index"), count="n"),
    # a statement's business events, the shared fields once: n × (rule, value, labels, count, rows_only)
    Op("B", ("stream", "maxlen", "ts", "sid", "txid", "app", "fp", "comment", "n"), ("stream",), count="n",
       per=5),
    _nested("IFNX", "key", "ttl", keys=("key",)),  # children if the key did not exist (SET NX EX)
    _nested("IFADD", "set", "member", keys=("set",)),  # children if the member is new to the set
    _nested("IFAGE", "hash", "field", "now", "min_age", keys=("hash",)),  # children if the field is old enough
    _nested("G", "outcome", "parked", "ttl", keys=("outcome", "parked")),  # a statement of an open transaction
    _nested("GN", "outcome", "parked", "ttl", "seq", keys=("outcome", "parked")),  # G with its number
    Op("C", ("outcome", "parked", "value", "ttl"), ("outcome", "parked")),  # the transaction's end
    Op("N", ("what",)),  # `what` comes back with the commit's reply (inside a condition: when it held)
)

BY_CODE: dict[str, Op] = {op.code: op for op in OPS}
KEY_OFFSETS: dict[str, tuple[int, ...]] = {op.code: op.key_offsets for op in OPS}

# code → (strings of the op without its tail, key offsets, tail count offset, strings per item): what `keys_in`
# steps by. Children are not stepped over but walked (offset 0): their keys count too.
_STEPS: dict[str, tuple[int, tuple[int, ...], int, int]] = {
    op.code: (1 + len(op.args), op.key_offsets, 0 if op.nested else op.count_offset, op.per) for op in OPS}


_SECTIONS = re.compile(r"^--@ops\n(.*?)^--@end\n", re.S | re.M)
_HANDLER = re.compile(r"^--- op (\S+)\n", re.M)


def handlers(script: str) -> dict[str, str]:
    """The handler sections of commit.lua (`--- op <code>` … between `--@ops` and `--@end`): code → body."""
    found = _SECTIONS.search(script)
    if found is None:
        raise ValueError("the commit script has no --@ops … --@end section")
    parts = _HANDLER.split(found.group(1))
    if parts[0].strip():
        raise ValueError("the commit script has text before its first --- op section")
    out: dict[str, str] = {}
    for code, body in zip(parts[1::2], parts[2::2], strict=True):
        if code in out:
            raise ValueError(f"the commit script handles op {code} twice")
        out[code] = body
    return out


def _branch(op: Op, body: str) -> list[str]:
    """One branch of `run`: where the op's tail starts and ends (if it has one), its handler, its step."""
    lines = []
    if op.count:
        fixed, at = len(op.args), op.count_offset
        times = "" if op.per == 1 else f"{op.per} * "
        lines += [f"local j = i + {fixed + 1}", f"local last = i + {fixed} + {times}tonumber(a[i + {at}])"]
    lines += body.rstrip("\n").split("\n")
    lines.append("i = last + 1" if op.count else f"i = i + {len(op.args) + 1}")
    return ["      " + line if line else "" for line in lines]


def render(script: str) -> str:
    """commit.lua with its handler sections made into `run`, the dispatcher: one branch an op, in the order
    of `OPS` (the most frequent first: an op is found after one comparison for each op ahead of it), each
    followed by the step the declaration gives. ValueError unless the sections handle exactly the declared
    ops."""
    bodies = handlers(script)
    declared = [op.code for op in OPS]
    missing = [c for c in declared if c not in bodies]
    extra = sorted(set(bodies) - set(declared))
    if missing or extra:
        raise ValueError("the commit script and ops.OPS disagree: "
                         + "; ".join(part for part in (f"no handler for {', '.join(missing)}" if missing else "",
                                                       f"{', '.join(extra)} not declared" if extra else "") if part))
    out = ["run = function(a, i, stop)", "  while i <= stop do", "    local op = a[i]"]
    for n, op in enumerate(OPS):
        out.append(f"    {'if' if n == 0 else 'elseif'} op == '{op.code}' then")
        out += _branch(op, bodies[op.code])
    out += ["    else", "      error('fasterdata: unknown op ' .. tostring(op))", "    end", "  end", "end", ""]
    return _SECTIONS.sub(lambda _: "\n".join(out), script, count=1)


def parse(flat: Sequence[str], start: int = 0, stop: int | None = None) -> list[tuple[int, Op]]:
    """Each op of a flat list with its index, children after their parent; ValueError if it does not parse
    (an unknown opcode, or an op or its children running past their end)."""
    stop = len(flat) if stop is None else stop
    out: list[tuple[int, Op]] = []
    i = start
    while i < stop:
        op = BY_CODE.get(flat[i])
        if op is None:
            raise ValueError(f"unknown op {flat[i]!r} at {i}")
        tail = i + 1 + len(op.args)
        nxt = tail + (int(flat[i + op.count_offset]) * op.per if op.count else 0)
        if nxt > stop:
            raise ValueError(f"op {op.code} at {i} runs past its end")
        out.append((i, op))
        if op.nested:
            out += parse(flat, tail, nxt)
        i = nxt
    return out


def keys_in(flat: Sequence[str]) -> set[str]:
    """Every key a flat list's ops (children included) name."""
    names: set[str] = set()
    add = names.add
    steps = _STEPS
    i, end = 0, len(flat)
    while i < end:
        step, keys, at, per = steps[flat[i]]
        for k in keys:
            add(flat[i + k])
        i += step + int(flat[i + at]) * per if at else step
    return names
