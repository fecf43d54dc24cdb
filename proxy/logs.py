"""Log set-up shared by every command: readable lines by default, JSON objects on request."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        sid = getattr(record, "sid", None)
        if sid is not None:
            entry["sid"] = sid
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Throttled:
    """One line per `every` seconds for a message that can come in floods (a connection storm over
    max_client_conn): the first is logged, the rest are counted into the next line that goes out."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter, every: float = 10.0) -> None:
        self.log = log
        self.every = every
        self._next = 0.0
        self._held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += f" (and {self._held} more like it in the last {self.every:g}s)"
        self._held = 0
        self._next = now + self.every
        self.log.warning(msg, *args)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, not the one of setup(): code that swaps
    it (pytest's capture, an embedding application) would otherwise leave the handler on a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
