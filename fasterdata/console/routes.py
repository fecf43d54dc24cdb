"""The console's routes on the project's HTTP endpoint (proxy/httpd.py): the page, its assets, the JSON API.

`/api/<view>` answers one `Reads` method as JSON; the page polls them, so it updates live without a
reload and works through any proxy that passes plain requests. Static files are read once from the
package (fasterdata/console/static) and plotly's browser bundle from the installed plotly package;
both are served gzipped to browsers that accept it.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from fasterdata.proxy.httpd import Reply, Request, Route

from .reads import SORTS, Reads

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png"}


class Asset:
    """One file served as it is, and gzipped once on first use."""

    def __init__(self, load: Callable[[], bytes], ctype: str, cache: str) -> None:
        self._load = load
        self.ctype = ctype
        self.cache = cache
        self._lock = threading.Lock()
        self._plain: bytes | None = None
        self._gzipped: bytes | None = None

    def reply(self, request: Request) -> Reply:
        with self._lock:
            if self._plain is None:
                self._plain = self._load()
                self._gzipped = gzip.compress(self._plain, 6, mtime=0)
        headers = f"Cache-Control: {self.cache}\r\nVary: Accept-Encoding\r\n"
        if "gzip" in request.headers.get("accept-encoding", "") and self._gzipped is not None:
            return Reply(self._gzipped, self.ctype, headers=headers + "Content-Encoding: gzip\r\n")
        return Reply(self._plain, self.ctype, headers=headers)


def plotly_bundle() -> bytes:
    """plotly.js as the plotly package ships it for offline use; a clear error when it is missing."""
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError(f"the plotly package's plotly.min.js is not installed ({exc}): pip install plotly") \
            from None


def static(name: str) -> Asset:
    suffix = name[name.rfind("."):]
    return Asset(lambda: (resources.files(__package__) / "static" / name).read_bytes(), _TYPES[suffix],
                 "no-cache")


def _json(data: Any, status: str = "200 OK") -> Reply:
    return Reply(json.dumps(data, default=str, separators=(",", ":")).encode(), "application/json", status,
                 "Cache-Control: no-store\r\n")


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "off")


def _named(query: dict[str, str], name: str) -> str | None:
    """A filter's value; absent means no filter (an empty name is a real one: application_name unset)."""
    return query.get(name)


def _count(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number, not {raw!r}")
    return max(1, min(int(raw), most))


def api(reads: Reads) -> Route:
    """GET /api/<view>?…: one view as JSON; 400 with one line for a bad parameter, 404 for an unknown view."""

    def answer(request: Request) -> Reply:
        view = request.path.removeprefix("/api/")
        q = request.query
        try:
            if view == "overview":
                return _json(reads.overview())
            if view == "top":
                sort = q.get("sort", "time")
                if sort not in SORTS:
                    raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
                return _json(reads.top(sort, _named(q, "db"), _named(q, "app"), _named(q, "user"),
                                       _flag(q.get("fold", "1")), _count(request, "limit", 50, 1000)))
            if view == "fingerprint":
                found = reads.fingerprint(q.get("fp", ""))
                return _json(found) if found is not None else _json({"error": "no such fingerprint"}, "404 Not Found")
            if view == "business":
                return _json(reads.business(_count(request, "days", 31, 400)))
            if view == "alerts":
                return _json(reads.alerts(_count(request, "limit", 50, 1000), q.get("kind") or None))
            if view == "pipeline":
                return _json(reads.pipeline())
            if view == "ledger":
                return _json(reads.ledger())
        except ValueError as exc:
            return _json({"error": str(exc)}, "400 Bad Request")
        except (redis.RedisError, RedisClusterException) as exc:
            return _json({"error": f"cannot read Redis: {exc}"}, "503 Service Unavailable")
        return _json({"error": f"no view {view!r}"}, "404 Not Found")

    return answer


def routes(reads: Reads) -> dict[str, Route]:
    """Every console path: "/" the page, /static/… its files and plotly, /api/… the data."""
    files = {name: static(name) for name in ("index.html", "console.js", "console.css")}
    files["plotly.min.js"] = Asset(plotly_bundle, _TYPES[".js"], "max-age=86400")

    def page(request: Request) -> Reply:
        if request.path not in ("/", "/index.html"):
            return Reply(b"not found\n", "text/plain", "404 Not Found")
        return files["index.html"].reply(request)

    def asset(request: Request) -> Reply:
        found = files.get(request.path.removeprefix("/static/"))
        return found.reply(request) if found else Reply(b"not found\n", "text/plain", "404 Not Found")

    return {"/": page, "/static/": asset, "/api/": api(reads)}
