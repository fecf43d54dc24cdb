"""Answers kept a moment and renewed behind the reader's back, so a page polling every few seconds is
answered at once however many fingerprints a view has to read.

A value younger than `max_age` is served as it is. An older one is served too, and one background read
renews it (never two for the same question): a polling page sees what Redis held one read earlier. A
question asked for the first time is read while the asker waits, unless a `default` is given: then the
default is the answer until the first read, made in the background, is done. A renewal that fails
drops the answer, so the next asker reads again and sees the failure (Redis gone is said, not hidden
behind an answer that no longer changes). Many browsers on one console cost Redis one read per view and
period, not one per browser.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger("fasterdata.console")
T = TypeVar("T")
_NONE = object()


class Fresh:
    """A bounded map question → (when read, answer), renewed on a small pool of threads."""

    def __init__(self, max_age: float, size: int = 256, workers: int = 2) -> None:
        self.max_age = max_age
        self.size = size
        self._lock = threading.Lock()
        self._answers: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._renewing: set[Hashable] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="console-read")

    def get(self, key: Hashable, read: Callable[[], T], default: Any = _NONE) -> T:
        with self._lock:
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
                if time.monotonic() - found[0] >= self.max_age:
                    self._renew_soon(key, read)
                return found[1]
            if default is not _NONE:
                self._renew_soon(key, read)
                return default
        value = read()
        self._store(key, value)
        return value

    def _renew_soon(self, key: Hashable, read: Callable[[], Any]) -> None:
        if key not in self._renewing:  # the caller holds the lock
            self._renewing.add(key)
            self._pool.submit(self._renew, key, read)

    def _renew(self, key: Hashable, read: Callable[[], Any]) -> None:
        try:
            self._store(key, read())
        except Exception as exc:
            log.debug("reading %r failed (%s); it is read again when asked", key, exc)
            with self._lock:
                self._answers.pop(key, None)
        finally:
            with self._lock:
                self._renewing.discard(key)

    def _store(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._answers[key] = (time.monotonic(), value)
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
