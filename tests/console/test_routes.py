"""proxy/httpd.py's routes, as the console uses them: exact paths and prefixes, the query and headers handed
over, a failing route a 500 (the endpoint keeps serving), /metrics never shadowed, auth before any route."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from fasterdata.proxy.httpd import MetricsServer, MetricsThread, Reply, Request


def _boom(_: Request) -> Reply:
    raise RuntimeError("a bug in a view")


@pytest.fixture
def served() -> Iterator[tuple[int, list[Request]]]:
    registry = CollectorRegistry()
    Counter("console_probe", "a counter", registry=registry).inc()
    seen: list[Request] = []

    def echo(request: Request) -> Reply:
        seen.append(request)
        return Reply(f"{request.path} {sorted(request.query.items())}".encode(), "text/plain",
                     headers="X-Route: echo\r\n")

    routes = {"/": lambda r: Reply(b"page", "text/html"), "/api/": echo, "/api/boom": _boom,
              "/metrics": lambda r: Reply(b"shadow")}
    endpoint = MetricsThread(MetricsServer(registry, user="u", password="p", routes=routes))
    port = endpoint.start("127.0.0.1", 0)
    yield port, seen
    endpoint.close()


def get(port: int, path: str, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()} if auth else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_routes_by_path_and_prefix(served: tuple[int, list[Request]]) -> None:
    port, seen = served
    status, headers, body = get(port, "/api/top?sort=calls&app=shop%20web&app=api")
    assert (status, headers["X-Route"], body) == (200, "echo", b"/api/top [('app', 'api'), ('sort', 'calls')]")
    assert seen[-1].headers["authorization"].startswith("Basic ")
    assert get(port, "/anything/else")[2] == b"page"  # "/" is the prefix of every path
    status, _, body = get(port, "/api/boom")
    assert status == 500 and b"internal error" in body
    assert get(port, "/api/after")[0] == 200  # still serving


def test_metrics_and_health_are_never_a_route(served: tuple[int, list[Request]]) -> None:
    port, _ = served
    status, _, body = get(port, "/metrics")
    assert status == 200 and b"console_probe_total 1.0" in body
    assert get(port, "/healthz")[2] == b"ok\n"


def test_auth_comes_before_any_route(served: tuple[int, list[Request]]) -> None:
    port, seen = served
    for path in ("/", "/api/top", "/api/boom", "/metrics"):
        assert get(port, path, auth=False)[0] == 401, path
    assert not seen  # no route ran for a request without credentials
