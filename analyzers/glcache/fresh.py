"""Keep cached days fresh from statement events: carry out what plan.py planned, through a narrow
interface to the cache (``Ledger``), so this module knows nothing of the cache's tiers.

Committed and autocommit statements apply at once; rolled-back and failed ones never. Writes in a
transaction still ``open`` (or ``prepared``) are remembered by (sid, txid) and applied when its ``txn_end``
event says it committed. Outcomes: ``patched`` (a patch was appended to a cached day), ``invalidated``
(a day must be loaded again) or ``ignored``.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from . import ipc
from .catalog import TableInfo
from .patch import only_day
from .plan import Action, OpenTransactions, Planner, row_days
from .tail import Tail, complete, holding_of

log = logging.getLogger("fasterdata.glcache")

PATCHED, INVALIDATED, IGNORED = "patched", "invalidated", "ignored"


class PatchLog(Protocol):
    """The patch log of the table's days (store.Store)."""

    def patch_targets(self) -> list[str]:
        """Days that are cached or being loaded."""
        ...

    def append_patches(self, payloads: dict[str, bytes]) -> dict[str, int]:
        """Append one patch per day; each day's patch number (0: the day is not cached)."""
        ...


class Ledger(Protocol):
    """What keeping days fresh needs of the cache."""

    @property
    def store(self) -> PatchLog: ...

    def info(self) -> TableInfo:
        """The table's columns (from the catalog)."""
        ...

    def forget_info(self) -> None:
        """The table changed shape: read the catalog again before the next use."""
        ...

    def invalidate(self, days: list[str]) -> list[str]:
        """Forget days everywhere; they load again on their next read."""
        ...

    def compact(self, day: str) -> bool:
        """Fold a day's patch log into a new base."""
        ...

    def held(self, day: str) -> pa.Table | None:
        """The day as cached now (patches applied), None if it cannot be read without loading it."""
        ...

    def read_keys(self, keys: Sequence[Any]) -> pa.Table:
        """The current rows with these keys, from PostgreSQL."""
        ...

    def read_tail(self, day: str, above: Any) -> Tail:
        """The day's rows above a key, with the day's count and key sum, in one snapshot (tail.py)."""
        ...


class Freshener:
    """Turns statement events into patches and invalidations for one cached table."""

    def __init__(self, ledger: Ledger, trust_values: bool = True, compact_after: int = 64,
                 stats: Counter[str] | None = None, open_limit: int = 10000):
        self.ledger = ledger
        self.planner = Planner(trust_values)
        self.compact_after = compact_after
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.open = OpenTransactions(open_limit)
        self.last_invalidated: list[str] = []

    def apply(self, event: dict[str, str]) -> str:
        """One event's outcome: 'patched', 'invalidated' or 'ignored'."""
        self.last_invalidated = []
        txid = f'{event.get("sid", "")}:{event.get("txid", "")}'
        if (event.get("kind", "stmt") or "stmt") == "txn_end":
            committed = event.get("txn") in ("committed", "autocommit")
            return self._run(self.open.finish(txid, committed))
        info = self.ledger.info()
        actions = self.planner.plan(event, info)
        if any(a.shape_changed for a in actions):
            self.ledger.forget_info()
        if all(a.kind == "none" for a in actions):
            return IGNORED
        if event.get("txn", "") in ("open", "prepared"):
            self.open.remember(txid, actions, info)
            return IGNORED
        return self._run(actions)

    def _run(self, actions: list[Action]) -> str:
        if not actions:
            return IGNORED
        info = self.ledger.info()
        outcomes = [self._execute(a, info) for a in actions]
        for outcome in (INVALIDATED, PATCHED):
            if outcome in outcomes:
                return outcome
        return IGNORED

    def _execute(self, action: Action, info: TableInfo) -> str:
        store = self.ledger.store
        if action.kind == "none":
            return IGNORED
        if action.kind == "rows":
            assert action.rows is not None
            return self._appended(store.append_patches(self._by_day(action.rows, info)))
        targets = store.patch_targets()
        if action.kind in ("reread", "delete"):
            if not targets:
                return IGNORED
            empty = info.plain_schema().empty_table()
            rows = self.ledger.read_keys(action.keys) if action.kind == "reread" else empty
            if action.kind == "reread":
                self.stats["rereads"] += 1
            payloads = {}
            for day in targets:
                mine = only_day(rows, info.date_column, datetime.date.fromisoformat(day))
                payloads[day] = ipc.encode_patch(mine, delete=action.keys)
            return self._appended(store.append_patches(payloads))
        if action.kind == "tail":
            days = sorted(action.days & set(targets)) if action.days else targets
            return self._tails(days, info)
        days = sorted(action.days & set(targets)) if action.kind == "days" else targets
        return self._invalidate(days)

    def _invalidate(self, days: list[str]) -> str:
        if not days:
            return IGNORED
        self.ledger.invalidate(days)
        self.last_invalidated = sorted(set(self.last_invalidated) | set(days))
        return INVALIDATED

    def _tails(self, days: list[str], info: TableInfo) -> str:
        """Each day's new rows patched in when the check holds (tail.py); the others invalidated."""
        payloads: dict[str, bytes] = {}
        stale: list[str] = []
        for day in days:
            held = self.ledger.held(day)
            if held is None:  # being loaded elsewhere, or gone: nothing to add the rows to
                stale.append(day)
                continue
            holding = holding_of(held, info.key_column)
            tail = self.ledger.read_tail(day, holding.key_max)
            self.stats["tail_reads"] += 1
            if not complete(holding, tail, info.key_column):
                self.stats["tail_mismatches"] += 1
                log.debug("glcache: %s holds rows the cache lacks below its largest key; reloading it", day)
                stale.append(day)
            elif tail.rows.num_rows:
                payloads[day] = ipc.encode_patch(tail.rows)
        outcome = self._appended(self.ledger.store.append_patches(payloads)) if payloads else IGNORED
        return self._invalidate(stale) if stale else outcome

    def _appended(self, results: dict[str, int]) -> str:
        """Outcome of appended patches; every compact_after-th patch of a day folds the log into its base."""
        for day, n in results.items():
            if n and n % self.compact_after == 0:
                self.ledger.compact(day)
        return PATCHED if any(results.values()) else IGNORED

    @staticmethod
    def _by_day(rows: pa.Table, info: TableInfo) -> dict[str, bytes]:
        return {day.isoformat(): ipc.encode_patch(only_day(rows, info.date_column, day))
                for day in row_days(rows, info.date_column)}
