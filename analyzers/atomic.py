"""Exactly-once: a batch's aggregates, events and alerts are applied in one Lua script with its XACK.

The script first checks that every entry of the batch is still pending *and owned by this
consumer*. If another worker has reclaimed one (we were slow, not dead), nothing is applied and
the caller recomputes the batch without the lost entries — so an entry's effects land exactly once
whether a worker is killed (its entries stay pending, unapplied, and are reclaimed) or merely stalls.
A batch read less than half the group's claim floor ago skips that check: nobody may have taken any
of it yet (`claim_floor`; the XPENDING reply is a large share of Redis's time a statement).

Writes are a small op language (flat string arguments, declared in ops.py; the script is commit.lua) so
Python can aggregate a batch before sending it: one HINCRBY per (key, field) instead of one per statement.
Ops that must keep their order (transaction groups and their end markers) and conditional ops nest their
children. Business events of one statement travel as one `B` op (the field names live in the script, the
statement's fields once, five strings a match) and a distinct rule's members as one `DS` op per set: the
events are most of a batch's arguments and of the script's calls. Their stream is trimmed to its cap once
a script, not at every XADD. Parked writes keep the older `X`/`D` forms (`portable`), which every version
of the script replays, so a worker of the previous release can still apply a transaction parked by this one.

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
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.connection import Connection

from . import ops, scripts

LUA = ops.render(scripts.read("commit.lua"))  # its dispatcher built from ops.OPS; redis-py takes its SHA
FLOOR_LUA = scripts.read("claim_floor.lua")


def _num(value: Any) -> str:
    return str(value)


class Writes:
    """Redis writes of one batch, in the op language of `ops.OPS`; aggregated where order does not matter."""

    __slots__ = ("declared", "distincts", "expire_ats", "expires", "extremes", "fincr", "incr", "nested", "noted",
                 "nx", "ordered", "portable", "sadd", "touches", "undescribed", "zincr")

    def __init__(self, portable: bool = False) -> None:
        self.incr: dict[tuple[str, str], int] = {}
        self.fincr: dict[tuple[str, str], float] = {}  # HINCRBYFLOAT
        self.zincr: dict[tuple[str, str], float] = {}
        self.extremes: dict[tuple[str, str, str], Any] = {}  # (op, key, field) → value
        self.nx: dict[tuple[str, str], str] = {}
        self.sadd: set[tuple[str, str]] = set()
        self.distincts: dict[tuple[str, str, str], set[str]] = {}  # (set, hash, field) → members
        self.expires: dict[str, int] = {}
        self.expire_ats: dict[str, int] = {}  # key → epoch seconds (EXPIREAT)
        self.touches: list[str] = []  # `L` ops, flat: run last, after the descriptions (NX) they check
        self.undescribed: list[str] = []  # after the commit: fingerprints the script found without stats:fp
        self.noted: list[str] = []  # after the commit: what the `note`s that ran reported
        self.ordered: list[Any] = []  # str args, or (header list, child Writes)
        self.nested = False  # any child in `ordered`: without one, args() copies it in one step
        self.declared: set[str] = set()  # keys of the ops in `ordered` (the rest: in the dicts, and `touches`)
        self.portable = portable  # parked for later: only ops every release of the script knows (X, D)

    def hincr(self, key: str, field: str, n: int) -> None:
        k = (key, field)
        self.incr[k] = self.incr.get(k, 0) + n

    def hincrf(self, key: str, field: str, x: float) -> None:
        """A float hash counter (HINCRBYFLOAT): sums that would overflow an integer, such as squares."""
        k = (key, field)
        self.fincr[k] = self.fincr.get(k, 0) + x

    def add_op(self, op: Sequence[str]) -> None:
        """One op of `ops.OPS` (its tail included), kept in order with its keys declared."""
        self._keep(op)

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

    def _keep(self, op: Sequence[str]) -> None:
        """Append an op to `ordered`, declaring its keys (where the declaration puts them). A caller that
        appends to `ordered` itself declares the keys of what it appends."""
        declared = self.declared
        for k in ops.KEY_OFFSETS[op[0]]:
            declared.add(op[k])
        self.ordered.extend(op)

    def hset(self, key: str, field: str, value: str) -> None:
        self._keep(("HS", key, field, value))

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
        args = ["X", key, str(maxlen), str(2 * len(fields))]
        for f, v in fields.items():
            args.append(f)
            args.append(v)
        self._keep(args)

    def note(self, what: str) -> None:
        """Have the commit's reply carry `what` if this op runs: inside a conditional child, only when its
        condition held. Never in parked writes (a previous release's script does not know the op)."""
        if self.portable:
            raise ValueError("a parked write cannot carry a note")
        self.ordered.extend(("N", what))

    def _child(self, header: list[str], portable: bool = False) -> Writes:
        self.declared.update(header[k] for k in ops.KEY_OFFSETS[header[0]])
        child = Writes(portable or self.portable)
        self.ordered.append((header, child))
        self.nested = True
        return child

    def parked(self, outcome_key: str, pending_key: str, ttl: int, seq: str = "") -> Writes:
        """Writes of a statement whose transaction is still open: applied when it commits, unless its
        number ``seq`` (the event's ``n``) is among those the commit says a ROLLBACK TO SAVEPOINT undid."""
        header = ["GN", outcome_key, pending_key, str(ttl), seq] if seq else ["G", outcome_key, pending_key, str(ttl)]
        return self._child(header, portable=True)

    def txn_end(self, outcome_key: str, pending_key: str, outcome: str, ttl: int, undone: str = "") -> None:
        """The transaction's outcome; ``undone`` (ranges ``a-b,…``) names parked statements not to apply."""
        if undone and outcome == "committed":
            outcome = f"{outcome};{undone}"
        self._keep(("C", outcome_key, pending_key, outcome, str(ttl)))

    def once(self, key: str, ttl: int) -> Writes:
        """Children run only if `key` did not exist (then it exists for ttl seconds): de-duplication."""
        return self._child(["IFNX", key, str(max(1, ttl))])

    def if_new_member(self, set_key: str, member: str) -> Writes:
        return self._child(["IFADD", set_key, member])

    def if_older(self, hash_key: str, field: str, now: int, min_age: int) -> Writes:
        """Children run if `field` (set to now when absent) is at least min_age old."""
        return self._child(["IFAGE", hash_key, field, str(now), str(min_age)])

    def __bool__(self) -> bool:
        return bool(self.incr or self.fincr or self.zincr or self.extremes or self.nx or self.sadd or self.distincts
                    or self.expires or self.expire_ats or self.touches or self.ordered)

    def key_names(self) -> set[str]:
        """Every key the ops (children included) name: the script's KEYS when sharded. The aggregates' keys
        come from their dicts, the `L` ops' from walking them by the declaration (`ops.keys_in`); the ops in
        `ordered` were declared as they were kept, which costs less than walking them."""
        names = set(self.declared)
        names.update(k for k, _ in self.incr)
        names.update(k for k, _ in self.fincr)
        names.update(k for k, _ in self.zincr)
        names.update(k for _, k, _ in self.extremes)
        names.update(k for k, _ in self.nx)
        names.update(k for k, _ in self.sadd)
        for set_key, hash_key, _ in self.distincts:
            names.add(set_key)
            names.add(hash_key)
        names.update(self.expires)
        names.update(self.expire_ats)
        names |= ops.keys_in(self.touches)
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
        for (key, field), x in self.fincr.items():
            if x:
                out.extend(("HF", key, field, repr(float(x))))
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
            writes.noted = [str(x) for x in result[4]] if len(result) > 4 else []
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
