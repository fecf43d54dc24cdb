"""The console's JSON API and files over plain HTTP, and its endpoint guarded like /metrics (basic auth, TLS)."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import ssl
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from fasterdata.analyzers.keys import Keys
from tests.console.kit import ConsoleProcess, Shop
from tests.kit.certs import TestPKI


def get(url: str, headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_top_answers_what_redis_holds(shop: Shop, console: ConsoleProcess) -> None:
    status, _, body = get(f"{console.url}/api/top?sort=calls&fold=0&limit=5")
    assert status == 200
    top = json.loads(body)
    k = Keys(shop.prefix)
    (member, calls), = shop.r.zrevrange(k.stats_top("calls"), 0, 0, withscores=True)
    assert top["rows"][0]["calls"] == int(calls) == int(shop.r.hget(k.stats_q(member), "calls"))
    assert top["folded"]["entries"] == 0  # fold=0 keeps BEGIN/COMMIT in the ranking


def test_bad_parameters_and_unknown_paths_are_named(console: ConsoleProcess) -> None:
    status, _, body = get(f"{console.url}/api/top?sort=fastest")
    assert status == 400 and "sort must be one of" in json.loads(body)["error"]
    status, _, body = get(f"{console.url}/api/top?limit=ten")
    assert status == 400 and "limit must be a whole number" in json.loads(body)["error"]
    assert get(f"{console.url}/api/nothing")[0] == 404
    assert get(f"{console.url}/api/fingerprint?fp=0000")[0] == 404
    assert get(f"{console.url}/nowhere")[0] == 404
    assert get(f"{console.url}/static/secret.py")[0] == 404


def test_the_page_its_files_and_plotly_are_served(console: ConsoleProcess) -> None:
    status, headers, body = get(console.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/static/console.js" in body
    status, headers, body = get(console.url + "/static/plotly.min.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    shipped = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    assert gzip.decompress(body) == shipped  # the installed plotly package's own bundle, not a copy
    status, headers, body = get(console.url + "/static/console.css")
    assert status == 200 and "Content-Encoding" not in headers and b"font" in body
    assert get(console.url + "/metrics")[0] == 200 and get(console.url + "/healthz")[2] == b"ok\n"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_and_tls_guard_the_console_as_they_guard_metrics(shop: Shop, tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    cert, key = pki.issue("console")
    c = ConsoleProcess(tmp_path, shop.prefix, "--metrics-user", "ops", "--metrics-password", "s3cret",
                       "--metrics-tls-cert", str(cert), "--metrics-tls-key", str(key))
    try:
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        url = f"https://127.0.0.1:{c.port}"
        for path in ("/", "/api/top", "/static/console.js", "/metrics"):
            status, headers, _ = get(url + path, context=tls)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
            assert get(url + path, _basic("ops", "wrong"), context=tls)[0] == 401, path
        status, _, body = get(url + "/api/overview", _basic("ops", "s3cret"), context=tls)
        assert status == 200 and json.loads(body)["prefix"] == shop.prefix
        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP to a TLS endpoint: no answer
            urllib.request.urlopen(f"http://127.0.0.1:{c.port}/api/top", timeout=5)
        assert f"fasterdata console on https://127.0.0.1:{c.port}/" in c.log()
    finally:
        assert c.stop() == 0, c.log()
