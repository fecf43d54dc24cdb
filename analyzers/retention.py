"""Bounded Redis growth: the performance summary's cap and the business days' index, swept now and then.

Business aggregates expire by themselves: each per-day key gets an EXPIREAT (end of its day plus
`business_retention_days`) in the commit that first writes it in a worker process (business.py). What
is left for a sweep is the per-rule `days` index, whose expired days are removed here.

The performance summary (`stats:q`, the `stats:top` sets, `stats:fp`, `seen:<app>`) has one entry per
statement shape, and an application that keeps inventing shapes (per-tenant table names, generated
temporary tables, ORMs with varying column lists) would grow it without end. As pg_stat_statements.max
does, a cap (`stats_max_fingerprints`, per shard) bounds it, and optionally an age
(`stats_retention_days`). The victims are the least recently *seen* fingerprints, not the least *used*:
a shape that arrives now has one call and would be the first victim of a least-used policy (a new
statement could never establish itself), while a heavy statement whose code path was removed weeks ago
would keep its large count for ever. pg_stat_statements needs a decaying usage figure to get around
this; the time a fingerprint was last seen keeps what the applications run now without a knob.

Every commit records, per fingerprint in its batch, the newest event second (`stats:last`, ZADD GT) and
the `<db>|<app>` members it wrote (`stats:members:<fp>`), in the same script as the counters, so
whatever exists is indexed. A sweep, per shard: read the oldest entries beyond the cap (and those past
the age), their member sets, then run `EVICT` (evict.lua) over a few of them at a time. The script declares every
key it touches (all of one shard: its hash tag), so a cluster runs it on one slot, and it re-checks
each fingerprint before removing anything: still over the cap (or past the age), not seen since it
was chosen, and no member added that was not declared. So several workers may sweep at once: a
fingerprint is evicted once, counted once, and never while a commit refreshes it.

Evicting a fingerprint removes its `stats:q` hashes and `stats:top` members, its `stats:fp`
description, its member set and index entry, and the fingerprint from the `seen:<app>` sets of its
applications. If it comes back it starts from zero and, its `seen` entry gone, may raise the
new-fingerprint alert again. A worker that knew its description writes it again after the commit that
finds it missing (atomic.py, op `L`).

The cap above counts fingerprints; each one has an entry per `<db>|<app>` it came from, and an
application that changes its application_name per process or per connection (`worker-4711`, admin
tools that add a connection number) would grow those without end under a fingerprint that stays. So
the entries have a cap of their own (`stats_max_entries`, per shard; pg_stat_statements.max counts
the same kind of entry, query × user × database), kept by the same rule: least recently seen first.
Every commit records each entry's newest second in `stats:entries` (atomic.py, op `L`).
`EVICT_ENTRIES` (evict_entries.lua) removes an entry's counters and top members; the fingerprint leaves
the application's `seen` set when no other database of that application still has it, the application's
first-seen mark goes with its last `seen` member (so a name that returns is learnt anew, not alerted on
shape by shape), and a fingerprint left without entries goes whole, as if the fingerprint cap had evicted it.

Entries written before this version that never recur again are in no index and are not evicted.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Iterator
from typing import Any

from . import scripts
from .keys import Keys

log = logging.getLogger("fasterdata.analyze")

EVICT = scripts.read("evict.lua")  # the fingerprint cap's
EVICT_ENTRIES = scripts.read("evict_entries.lua")  # the entry cap's

MAX_PER_SWEEP = 2000  # fingerprints considered per shard and sweep: bounded work
KEYS_PER_CALL = 400  # keys one EVICT call names at most (a short script: commits wait while it runs)


def _app(member: str) -> str | None:
    """The application of a `<db>|<app>` member (as the script reads it: after the first bar)."""
    _, bar, app = member.partition("|")
    return app if bar else None


def _day_end(day: str) -> int | None:
    """Epoch second at which a `yyyy-mm-dd` (UTC) day ends; None for a name that is not a day."""
    try:
        return calendar.timegm(time.strptime(day, "%Y-%m-%d")) + 86400
    except (ValueError, OverflowError):
        return None


class Sweeper:
    """One worker's sweeps over every shard (single-key commands and one-slot scripts: cluster-safe)."""

    def __init__(self, client: Any, shards: list[Keys], rules: list[str], max_fingerprints: int,
                 stats_retention_days: int, business_retention_days: int, max_entries: int = 0) -> None:
        self.r = client
        self.shards = shards
        self.rules = rules
        self.cap = max_fingerprints
        self.entry_cap = max_entries
        self.stats_age = stats_retention_days * 86400
        self.biz_days = business_retention_days
        self.script = client.register_script(EVICT)
        self.entry_script = client.register_script(EVICT_ENTRIES)
        self.more = False  # the last sweep stopped at its bound: sweep again soon
        self.entries: list[str] = []  # fp|db|app entries the last run evicted (beyond whole fingerprints)

    def run(self, now: float | None = None) -> tuple[list[str], int]:
        """One sweep: (fingerprints evicted, business days removed from the index)."""
        now = time.time() if now is None else now
        self.more = False
        self.entries = []
        evicted: list[str] = []
        days = 0
        for keys in self.shards:
            if self.cap or self.stats_age:
                evicted += self.evict(keys, now)
            if self.entry_cap:
                self.entries += self.evict_entries(keys)
            if self.biz_days:
                days += self.expire_days(keys, now)
        if evicted or self.entries or days:
            log.info("sweep: evicted %d fingerprint(s) and %d more fingerprint × database × application "
                     "entries from the performance summary, removed %d expired business day(s) from the "
                     "index%s", len(evicted), len(self.entries), days,
                     " (more to do: sweeping again soon)" if self.more else "")
        return evicted, days

    def victims(self, keys: Keys, now: float) -> list[tuple[str, float]]:
        """The shard's least recently seen fingerprints beyond the cap, and those past the age."""
        last = keys.stats_last
        chosen: dict[str, float] = {}
        if self.cap:
            excess = self.r.zcard(last) - self.cap
            if excess > 0:
                self.more = self.more or excess > MAX_PER_SWEEP
                chosen.update(self.r.zrange(last, 0, min(excess, MAX_PER_SWEEP) - 1, withscores=True))
        if self.stats_age:
            old = self.r.zrangebyscore(last, "-inf", int(now) - self.stats_age, start=0, num=MAX_PER_SWEEP,
                                       withscores=True)
            self.more = self.more or len(old) == MAX_PER_SWEEP
            chosen.update(old)
        return sorted(chosen.items(), key=lambda x: (x[1], x[0]))[:MAX_PER_SWEEP]

    def evict(self, keys: Keys, now: float) -> list[str]:
        """Evict the shard's victims, a few per script call; returns those this call removed."""
        victims = self.victims(keys, now)
        if not victims:
            return []
        pipe = self.r.pipeline(transaction=False)
        for fp, _ in victims:
            pipe.smembers(keys.stats_members(fp))
        members = pipe.execute()
        cutoff = int(now) - self.stats_age if self.stats_age else 0
        head = [str(self.cap), str(cutoff), keys.stats_q(""), keys.seen(""), keys.stats_fp(""),
                keys.stats_members("")]
        fixed = [keys.stats_last, keys.stats_top("time"), keys.stats_top("calls"), keys.stats_top("errors"),
                 keys.stats_entries]

        def each() -> Iterator[tuple[list[str], set[str]]]:
            for (fp, score), mset in zip(victims, members, strict=True):
                ms = sorted(mset)
                names = {keys.stats_fp(fp), keys.stats_members(fp)}
                for m in ms:
                    names.add(keys.stats_q(f"{fp}|{m}"))
                    app = _app(m)
                    if app is not None:
                        names.add(keys.seen(app))
                yield [fp, repr(score), str(len(ms)), *ms], names

        return self._run(self.script, fixed, head, each())

    def evict_entries(self, keys: Keys) -> list[str]:
        """The shard's least recently seen fp|db|app entries beyond the entry cap, a few per script call."""
        excess = self.r.zcard(keys.stats_entries) - self.entry_cap
        if excess <= 0:
            return []
        self.more = self.more or excess > MAX_PER_SWEEP
        victims = self.r.zrange(keys.stats_entries, 0, min(excess, MAX_PER_SWEEP) - 1, withscores=True)
        head = [str(self.entry_cap), keys.stats_q(""), keys.seen(""), keys.stats_members(""), keys.stats_fp("")]
        fixed = [keys.stats_entries, keys.stats_top("time"), keys.stats_top("calls"), keys.stats_top("errors"),
                 keys.stats_last, keys.seen_since]

        def each() -> Iterator[tuple[list[str], set[str]]]:
            for entry, score in victims:
                fp, _, member = entry.partition("|")
                app = _app(member)
                names = {keys.stats_q(entry), keys.stats_members(fp), keys.stats_fp(fp)}
                yield [entry, repr(score)], names if app is None else names | {keys.seen(app)}

        return self._run(self.entry_script, fixed, head, each())

    @staticmethod
    def _run(script: Any, fixed: list[str], head: list[str],
             victims: Iterator[tuple[list[str], set[str]]]) -> list[str]:
        """Run an eviction script over the victims (their arguments, the keys they name), a few per call:
        every key declared, at most about KEYS_PER_CALL a call so commits never wait long."""
        out: list[str] = []
        names: set[str] = set()
        args: list[str] = []
        for more_args, more_names in victims:
            args += more_args
            names |= more_names
            if len(names) >= KEYS_PER_CALL:
                out += [str(x) for x in script(keys=fixed + sorted(names - set(fixed)), args=head + args)]
                names, args = set(), []
        if args:
            out += [str(x) for x in script(keys=fixed + sorted(names - set(fixed)), args=head + args)]
        return out

    def expire_days(self, keys: Keys, now: float) -> int:
        """Remove from each rule's `days` index the days whose keys have expired (end + retention ≤ now)."""
        removed = 0
        horizon = self.biz_days * 86400
        for rule in self.rules:
            name = keys.biz_days(rule)
            gone = [d for d in self.r.smembers(name) if (end := _day_end(d)) is not None and end + horizon <= now]
            if gone:
                removed += self.r.srem(name, *gone)
        return removed
