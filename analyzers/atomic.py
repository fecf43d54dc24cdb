"""Exactly-once: a batch's aggregates, events and alerts are applied in one Lua script with its XACK.

The script first checks that every entry of the batch is still pending *and owned by this
consumer*. If another worker has reclaimed one (we were slow, not dead), nothing is applied and
the caller recomputes the batch without the lost entries — so an entry's effects land exactly once
whether a worker is killed (its entries stay pending, unapplied, and are reclaimed) or merely stalls.
A batch read less than half the group's claim floor ago skips that check: nobody may have taken any
of it yet (`claim_floor`; the XPENDING reply was a fifth of Redis's time a statement).

Writes are a small op language (flat string arguments) so Python can aggregate a batch before
sending it: one HINCRBY per (key, field) instead of one per statement. Ops that must keep their
order (transaction groups and their end markers) and conditional ops nest their children.
Business events of one statement travel as one `B` op (the field names live in the script, the
statement's fields once, five strings a match) and a distinct rule's members as one `DS` op per set:
the events are most of a batch's arguments and of the script's calls. Their stream is trimmed to its
cap once a script, not at every XADD (a batch's events replayed: 1.14 → 0.99 ms). Parked writes keep the older
`X`/`D` forms (`portable`), which every version of the script replays, so a worker of the previous
release can still apply a transaction parked by this one.

Two ops serve bounded growth (retention.py): `EA` (EXPIREAT, absolute) for business day keys, sent
once per key and process; `L`, per fingerprint of a batch, records when it and each of its fp|db|app
entries were last seen and its members, and reports fingerprints whose description an eviction
removed (the script returns them, the worker describes them again). Parked writes never carry
either: they use the relative `E`.

Transactions whose statements arrive with txn=open are parked: their writes are appended
(msgpack) to `<prefix>:txn:<sid>:<txid>` unless the outcome is already known; the txn_end marker
records the outcome and applies (committed) or drops (anything else) what was parked. Both run
inside the script, so the order in which workers see the statements and the marker does not matter.

Sharded (`declare=True`): KEYS are the shard's stream and every key the batch's ops name, so redis-py
routes the EVALSHA to that slot's node and Redis Cluster can check it. Replaying parked writes at a
txn_end touches the keys stored with them, undeclared but in the same slot by construction: they were
named with the same shard's tag, and a session (its statements and its marker) never changes shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection

LUA = r"""
-- outcome values: 'committed', 'committed;a-b,c-d' (statements a…b sent early, then undone by
-- ROLLBACK TO SAVEPOINT), 'rolled_back' …
local function split_outcome(v)
  if not v then return nil, '' end
  local base, undone = string.match(v, '^([^;]*);?(.*)$')
  return base, undone
end
local function is_undone(undone, seq)
  if undone == '' or not seq then return false end
  for lo, hi in string.gmatch(undone, '(%d+)-(%d+)') do
    if seq >= tonumber(lo) and seq <= tonumber(hi) then return true end
  end
  return false
end
local undescribed = {}  -- fingerprints whose description (stats:fp) is gone: evicted while a worker knew them
local caps = {}  -- business event stream → its MAXLEN: trimmed once at the end, not at every XADD
local run
run = function(a, i, stop)
  while i <= stop do
    local op = a[i]
    if op == 'H' then
      redis.call('HINCRBY', a[i+1], a[i+2], a[i+3]); i = i + 4
    elseif op == 'Z' then
      redis.call('ZINCRBY', a[i+1], a[i+3], a[i+2]); i = i + 4
    elseif op == 'MAX' or op == 'MIN' then
      local cur = redis.call('HGET', a[i+1], a[i+2])
      local v = tonumber(a[i+3])
      if (not cur) or (op == 'MAX' and v > tonumber(cur)) or (op == 'MIN' and v < tonumber(cur)) then
        redis.call('HSET', a[i+1], a[i+2], a[i+3])
      end
      i = i + 4
    elseif op == 'NX' then
      redis.call('HSETNX', a[i+1], a[i+2], a[i+3]); i = i + 4
    elseif op == 'HS' then
      redis.call('HSET', a[i+1], a[i+2], a[i+3]); i = i + 4
    elseif op == 'S' then
      redis.call('SADD', a[i+1], a[i+2]); i = i + 3
    elseif op == 'D' then
      redis.call('SADD', a[i+1], a[i+4])
      redis.call('HSET', a[i+2], a[i+3], redis.call('SCARD', a[i+1]))
      i = i + 5
    elseif op == 'DS' then
      local n = tonumber(a[i+4])
      for k = i + 5, i + 4 + n, 1000 do
        redis.call('SADD', a[i+1], unpack(a, k, math.min(k + 999, i + 4 + n)))
      end
      redis.call('HSET', a[i+2], a[i+3], redis.call('SCARD', a[i+1]))
      i = i + 5 + n
    elseif op == 'E' then
      redis.call('EXPIRE', a[i+1], a[i+2]); i = i + 3
    elseif op == 'EA' then
      redis.call('EXPIREAT', a[i+1], a[i+2]); i = i + 3
    elseif op == 'L' then
      -- a fingerprint's statements in this batch: last seen (for the cap) and its fp|db|app members; a
      -- member new to the set while the description is missing means the fingerprint was evicted and is back;
      -- each fp|db|app entry's last-seen second goes to the entries index (the entry cap)
      local n, added = tonumber(a[i+7]), 0
      redis.call('ZADD', a[i+1], 'GT', a[i+3], a[i+2])
      for k = i + 8, i + 7 + n, 1000 do
        added = added + redis.call('SADD', a[i+5], unpack(a, k, math.min(k + 999, i + 7 + n)))
      end
      for k = i + 8, i + 7 + n do redis.call('ZADD', a[i+6], 'GT', a[k + n], a[i+2] .. '|' .. a[k]) end
      if added > 0 and redis.call('EXISTS', a[i+4]) == 0 then undescribed[#undescribed + 1] = a[i+2] end
      i = i + 8 + 2 * n
    elseif op == 'X' then
      local n = tonumber(a[i+3])
      redis.call('XADD', a[i+1], 'MAXLEN', '~', a[i+2], '*', unpack(a, i + 4, i + 3 + n))
      i = i + 4 + n
    elseif op == 'B' then
      local key, ts, sid, txid, app, fp, comment = a[i+1], a[i+3], a[i+4], a[i+5], a[i+6], a[i+7], a[i+8]
      caps[key] = a[i+2]
      local j = i + 10
      for _ = 1, tonumber(a[i+9]) do
        if comment == '' and a[j+3] == '' and a[j+4] == '' then
          redis.call('XADD', key, '*', 'rule', a[j], 'value', a[j+1], 'labels', a[j+2], 'ts', ts, 'sid', sid,
            'txid', txid, 'app', app, 'fp', fp)
        else
          local f = {'rule', a[j], 'value', a[j+1], 'labels', a[j+2], 'ts', ts, 'sid', sid, 'txid', txid, 'app', app,
            'fp', fp}
          if comment ~= '' then f[#f + 1] = 'comment'; f[#f + 1] = comment end
          if a[j+3] ~= '' then f[#f + 1] = 'count'; f[#f + 1] = a[j+3] end
          if a[j+4] ~= '' then f[#f + 1] = 'rows_only'; f[#f + 1] = a[j+4] end
          redis.call('XADD', key, '*', unpack(f))
        end
        j = j + 5
      end
      i = j
    elseif op == 'IFNX' then
      local n = tonumber(a[i+3])
      if redis.call('SET', a[i+1], '1', 'NX', 'EX', a[i+2]) then run(a, i + 4, i + 3 + n) end
      i = i + 4 + n
    elseif op == 'IFADD' then
      local n = tonumber(a[i+3])
      if redis.call('SADD', a[i+1], a[i+2]) == 1 then run(a, i + 4, i + 3 + n) end
      i = i + 4 + n
    elseif op == 'IFAGE' then
      local n = tonumber(a[i+5])
      redis.call('HSETNX', a[i+1], a[i+2], a[i+3])
      local since = tonumber(redis.call('HGET', a[i+1], a[i+2]))
      if tonumber(a[i+3]) - since >= tonumber(a[i+4]) then run(a, i + 6, i + 5 + n) end
      i = i + 6 + n
    elseif op == 'G' or op == 'GN' then
      -- GN carries the statement's number in its transaction (after ttl), kept with what is parked
      local outcome_key, parked_key, ttl, seq, c = a[i+1], a[i+2], a[i+3], nil, i + 4
      if op == 'GN' then seq = tonumber(a[c]); c = c + 1 end
      local n = tonumber(a[c])
      local outcome, undone = split_outcome(redis.call('GET', outcome_key))
      if outcome == 'committed' then
        if not is_undone(undone, seq) then run(a, c + 1, c + n) end
      elseif not outcome then
        local sub = {}
        for k = c + 1, c + n do sub[#sub + 1] = a[k] end
        -- the number travels as a second msgpack object: a script that knows only one still replays it
        redis.call('RPUSH', parked_key, seq and cmsgpack.pack(sub, seq) or cmsgpack.pack(sub))
        redis.call('EXPIRE', parked_key, ttl)
      end
      i = c + 1 + n
    elseif op == 'C' then
      redis.call('SET', a[i+1], a[i+3], 'EX', a[i+4])
      local outcome, undone = split_outcome(a[i+3])
      if outcome == 'committed' then
        for _, blob in ipairs(redis.call('LRANGE', a[i+2], 0, -1)) do
          local sub, seq = cmsgpack.unpack(blob)
          if not is_undone(undone, seq) then run(sub, 1, #sub) end
        end
      end
      redis.call('DEL', a[i+2])
      i = i + 5
    else
      error('fasterdata: unknown op ' .. tostring(op))
    end
  end
end

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local ids = cjson.decode(ARGV[5])
local nids = #ids
-- ARGV[7], ARGV[8]: when the batch was read (ms, this server's clock, before the read ran) and the
-- group's claim floor key. No consumer takes an entry idle for less than the floor, so a batch read
-- less than half of it ago is still wholly ours and needs no entry-by-entry check.
local fresh = false
if ARGV[7] then
  local floor = redis.call('GET', ARGV[8])
  if floor then
    local t = redis.call('TIME')
    fresh = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[7]) < tonumber(floor) / 2
  end
end
if nids > 0 and not fresh then
  local pend = redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], nids + 10000, consumer)
  local owned = {}
  for _, p in ipairs(pend) do owned[p[1]] = true end
  local missing = {}
  for k = 1, nids do
    if not owned[ids[k]] then missing[#missing + 1] = ids[k] end
  end
  if #missing > 0 then
    table.insert(missing, 1, 0)
    return missing
  end
end
for k = 1, nids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, k, math.min(k + 999, nids)))
end
local ops = cjson.decode(ARGV[6])
run(ops, 1, #ops)
for key, maxlen in pairs(caps) do redis.call('XTRIM', key, 'MAXLEN', '~', maxlen) end
return {1, nids, undescribed, fresh and 0 or 1}
"""

# Sets the group's claim floor (ms) to a claimer's min-idle when that is lower, or when the floor has
# lapsed: a floor outlives its setter by PX, which the setter renews at every claim pass.
FLOOR_LUA = r"""
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(ARGV[1]) <= tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call('GET', KEYS[1])
"""


def _num(value: Any) -> str:
    return str(value)


class Writes:
    """Redis writes of one batch, in the op language of `LUA`; aggregated where order does not matter."""

    __slots__ = ("declared", "distincts", "expire_ats", "expires", "extremes", "incr", "nested", "nx", "ordered",
                 "portable", "sadd", "touches", "undescribed", "zincr")

    def __init__(self, portable: bool = False) -> None:
        self.incr: dict[tuple[str, str], int] = {}
        self.zincr: dict[tuple[str, str], float] = {}
        self.extremes: dict[tuple[str, str, str], Any] = {}  # (op, key, field) → value
        self.nx: dict[tuple[str, str], str] = {}
        self.sadd: set[tuple[str, str]] = set()
        self.distincts: dict[tuple[str, str, str], set[str]] = {}  # (set, hash, field) → members
        self.expires: dict[str, int] = {}
        self.expire_ats: dict[str, int] = {}  # key → epoch seconds (EXPIREAT)
        self.touches: list[str] = []  # `L` ops, flat: run last, after the descriptions (NX) they check
        self.undescribed: list[str] = []  # after the commit: fingerprints the script found without stats:fp
        self.ordered: list[Any] = []  # str args, or (header list, child Writes)
        self.nested = False  # any child in `ordered`: without one, args() copies it in one step
        self.declared: set[str] = set()  # keys named by the flat ops in `ordered` (the rest: in the dicts)
        self.portable = portable  # parked for later: only ops every release of the script knows (X, D)

    def hincr(self, key: str, field: str, n: int) -> None:
        k = (key, field)
        self.incr[k] = self.incr.get(k, 0) + n

    def zincr_(self, key: str, member: str, x: float) -> None:
        k = (key, member)
        self.zincr[k] = self.zincr.get(k, 0) + x

    def hmax(self, key: str, field: str, value: Any) -> None:
        k = ("MAX", key, field)
        cur = self.extremes.get(k)
        if cur is None or value > cur:
            self.extremes[k] = value

    def hmin(self, key: str, field: str, value: Any) -> None:
        k = ("MIN", key, field)
        cur = self.extremes.get(k)
        if cur is None or value < cur:
            self.extremes[k] = value

    def setnx(self, key: str, field: str, value: str) -> None:
        self.nx.setdefault((key, field), value)

    def hset(self, key: str, field: str, value: str) -> None:
        self.declared.add(key)
        self.ordered.extend(("HS", key, field, value))

    def add(self, key: str, member: str) -> None:
        self.sadd.add((key, member))

    def distinct(self, set_key: str, hash_key: str, field: str, member: str) -> None:
        k = (set_key, hash_key, field)
        members = self.distincts.get(k)
        if members is None:
            self.distincts[k] = {member}
        else:
            members.add(member)

    def expire(self, key: str, seconds: int) -> None:
        self.expires[key] = seconds

    def expire_at(self, key: str, at: int) -> None:
        """Expire `key` at epoch second `at`. Parked writes may be replayed by a previous release's script,
        which knows only relative expiry: there it becomes EXPIRE of the seconds left now (the key then
        lives as much longer as the transaction stayed open)."""
        if self.portable:
            self.expires[key] = max(1, at - int(time.time()))
        else:
            self.expire_ats[key] = at

    def touch(self, last_key: str, fp: str, fp_key: str, members_key: str, entries_key: str, members: list[str],
              seconds: list[int]) -> None:
        """A fingerprint seen in this batch: its `<db>|<app>` members and the newest event (epoch seconds) of each."""
        self.touches.extend(("L", last_key, fp, str(max(seconds)), fp_key, members_key, entries_key,
                             str(len(members))))
        self.touches.extend(members)
        self.touches.extend(map(str, seconds))

    def xadd(self, key: str, maxlen: int, fields: dict[str, str]) -> None:
        self.declared.add(key)
        args = ["X", key, str(maxlen), str(2 * len(fields))]
        for f, v in fields.items():
            args.append(f)
            args.append(v)
        self.ordered.extend(args)

    def _child(self, header: list[str], *keys: str, portable: bool = False) -> Writes:
        self.declared.update(keys)
        child = Writes(portable or self.portable)
        self.ordered.append((header, child))
        self.nested = True
        return child

    def parked(self, outcome_key: str, pending_key: str, ttl: int, seq: str = "") -> Writes:
        """Writes of a statement whose transaction is still open: applied when it commits, unless its
        number ``seq`` (the event's ``n``) is among those the commit says a ROLLBACK TO SAVEPOINT undid."""
        header = ["GN", outcome_key, pending_key, str(ttl), seq] if seq else ["G", outcome_key, pending_key, str(ttl)]
        return self._child(header, outcome_key, pending_key, portable=True)

    def txn_end(self, outcome_key: str, pending_key: str, outcome: str, ttl: int, undone: str = "") -> None:
        """The transaction's outcome; ``undone`` (ranges ``a-b,…``) names parked statements not to apply."""
        self.declared.update((outcome_key, pending_key))
        if undone and outcome == "committed":
            outcome = f"{outcome};{undone}"
        self.ordered.extend(("C", outcome_key, pending_key, outcome, str(ttl)))

    def once(self, key: str, ttl: int) -> Writes:
        """Children run only if `key` did not exist (then it exists for ttl seconds): de-duplication."""
        return self._child(["IFNX", key, str(max(1, ttl))], key)

    def if_new_member(self, set_key: str, member: str) -> Writes:
        return self._child(["IFADD", set_key, member], set_key)

    def if_older(self, hash_key: str, field: str, now: int, min_age: int) -> Writes:
        """Children run if `field` (set to now when absent) is at least min_age old."""
        return self._child(["IFAGE", hash_key, field, str(now), str(min_age)], hash_key)

    def __bool__(self) -> bool:
        return bool(self.incr or self.zincr or self.extremes or self.nx or self.sadd or self.distincts
                    or self.expires or self.expire_ats or self.touches or self.ordered)

    def key_names(self) -> set[str]:
        """Every key the ops (children included) name: the script's KEYS when sharded."""
        names = set(self.declared)
        names.update(k for k, _ in self.incr)
        names.update(k for k, _ in self.zincr)
        names.update(k for _, k, _ in self.extremes)
        names.update(k for k, _ in self.nx)
        names.update(k for k, _ in self.sadd)
        for set_key, hash_key, _ in self.distincts:
            names.add(set_key)
            names.add(hash_key)
        names.update(self.expires)
        names.update(self.expire_ats)
        t = self.touches
        i = 0
        while i < len(t):  # L, last, fp, ts, fp_key, members_key, entries_key, n, n members, their n seconds
            names.add(t[i + 1])
            names.add(t[i + 4])
            names.add(t[i + 5])
            names.add(t[i + 6])
            i += 8 + 2 * int(t[i + 7])
        if self.nested:
            for item in self.ordered:
                if isinstance(item, tuple):
                    names |= item[1].key_names()
        return names

    def args(self) -> list[str]:
        if not self.nested:
            out: list[str] = list(self.ordered)  # the common case (no parked txn, no alert): one C-level copy
        else:
            out = []
            for item in self.ordered:
                if isinstance(item, tuple):
                    header, child = item
                    sub = child.args()
                    out.extend(header)
                    out.append(str(len(sub)))
                    out.extend(sub)
                else:
                    out.append(item)
        for (key, field), n in self.incr.items():
            if n:
                out.extend(("H", key, field, str(n)))
        for (key, member), x in self.zincr.items():
            if x:
                out.extend(("Z", key, member, repr(x) if isinstance(x, float) else str(x)))
        for (op, key, field), v in self.extremes.items():
            out.extend((op, key, field, _num(v)))
        for (key, field), v in self.nx.items():
            out.extend(("NX", key, field, v))
        for key, member in self.sadd:
            out.extend(("S", key, member))
        if self.portable:
            for (set_key, hash_key, field), members in self.distincts.items():
                for member in members:
                    out.extend(("D", set_key, hash_key, field, member))
        else:
            for (set_key, hash_key, field), members in self.distincts.items():
                out.extend(("DS", set_key, hash_key, field, str(len(members))))
                out.extend(members)
        for key, seconds in self.expires.items():
            out.extend(("E", key, str(seconds)))
        for key, at in self.expire_ats.items():
            out.extend(("EA", key, str(at)))
        out.extend(self.touches)
        return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Committer:
    """Runs the script: returns the ids another consumer now owns (empty list on success).

    declare: pass every key as KEYS (sharded deployments; a cluster needs it). One unsharded stream
    keeps the cheaper call with the stream as the only key.
    floor_key: the group's claim floor (see `claim_floor`); a batch whose read time is given skips the
    ownership check while it is young enough. None (a cluster: the key lives in another slot): every
    batch is checked."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str, declare: bool = False,
                 floor_key: str | None = None) -> None:
        self.client = client
        self.script = client.register_script(LUA)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.declare = declare
        self.floor_key = floor_key
        self.checked = 0  # commits that verified ownership entry by entry (the rest were young enough)
        self._conn: Connection | None = None  # `start`'s own connection
        self._unread = False  # a commit was sent on it and its reply not read yet

    def _call(self, ids: list[str], writes: Writes, read_at: int | None) -> tuple[list[str], list[Any]]:
        # Two JSON arguments instead of thousands: redis-py packs each argument in Python, cjson
        # decodes in C.
        if ids:
            keys = sorted(ids, key=_id_key)
            lo, hi = keys[0], keys[-1]
        else:
            lo, hi = "-", "+"
        names = [self.stream]
        if self.declare:
            names += sorted(writes.key_names() - {self.stream})
        args: list[Any] = [self.group, self.consumer, lo, hi, json.dumps(ids), json.dumps(writes.args())]
        if read_at is not None and self.floor_key is not None:
            args += [read_at, self.floor_key]
        return names, args

    def _outcome(self, ids: list[str], writes: Writes, result: list[Any]) -> list[str]:
        if int(result[0]) == 1:
            writes.undescribed = list(result[2]) if len(result) > 2 else []
            if ids and int(result[3]):
                self.checked += 1
            return []
        return [str(x) for x in result[1:]]

    def commit(self, ids: list[str], writes: Writes, read_at: int | None = None) -> list[str]:
        """read_at: the server's clock (ms) just before the read that delivered `ids` ran."""
        names, args = self._call(ids, writes, read_at)
        return self._outcome(ids, writes, self.script(keys=names, args=args))

    def start(self, ids: list[str], writes: Writes, read_at: int | None = None) -> Callable[[], list[str]]:
        """Send the commit and return at once; the returned call reads its outcome (as `commit`'s).

        Redis runs the script while the caller goes on analysing, and no helper thread has to win the
        GIL to send it or to read the reply (a thread woken while the analysing thread computes waits
        up to the 5 ms switch interval). One Redis only: the commit goes out on this committer's own
        connection, which carries one commit at a time."""
        names, args = self._call(ids, writes, read_at)
        conn = self._link()
        try:
            conn.send_command("EVALSHA", self.script.sha, len(names), *names, *args)
        except Exception:
            conn.disconnect()
            raise
        self._unread = True

        def outcome() -> list[str]:
            try:
                result = conn.read_response()
            except redis.exceptions.NoScriptError:  # Redis lost its scripts (restart, SCRIPT FLUSH): nothing ran
                result = self.script(keys=names, args=args)  # loads it and runs it
            except Exception:
                conn.disconnect()  # whether the script ran is unknown: the entries stay pending until acked
                raise
            finally:
                self._unread = False
            return self._outcome(ids, writes, result)
        return outcome

    def _link(self) -> Connection:
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection()
        elif self._unread:  # the last commit's reply was never read (its caller gave up on it)
            self._conn.disconnect()
            self._unread = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            if self._unread:
                self._conn.disconnect()
            self.client.connection_pool.release(self._conn)
            self._conn = None


def claim_floor(client: redis.Redis, key: str, claim_idle_ms: int) -> int:
    """Publish this claimer's min-idle as the group's floor if it is the lowest; returns the floor.

    Called before each XAUTOCLAIM pass, so the floor is in place before anything is taken; it lapses
    3 × claim_idle (at least a minute) after its setter's last pass."""
    ttl = max(60_000, 3 * claim_idle_ms)
    return int(client.eval(FLOOR_LUA, 1, key, claim_idle_ms, ttl))
