"""/metrics, /healthz and /readyz read over HTTP(S), as a scraper or a probe would."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http(url: str, context: ssl.SSLContext | None = None, auth: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a GET; 4xx/5xx are answers, not exceptions."""
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def http_get(port: int, path: str = "/metrics") -> tuple[int, str]:
    """(status, body) of a plain-HTTP GET on 127.0.0.1:port; a 503 is an answer, not an exception."""
    status, _headers, body = http(f"http://127.0.0.1:{port}{path}")
    return status, body


def parse_samples(text: str) -> Samples:
    """Exposition text as samples keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def scrape(proxy: ProxyProcess) -> tuple[str, Samples]:
    """The proxy's /metrics text and its samples."""
    status, text = http_get(proxy.metrics_port, "/metrics")
    assert status == 200, text
    return text, parse_samples(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing series reads 0 (a counter never incremented is not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def metric(port: int, name: str) -> float:
    """One unlabelled sample from a plain-HTTP /metrics (0 when absent)."""
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    return value(parse_samples(text), name)


def settle(proxy: ProxyProcess, timeout: float = 60.0) -> Samples:
    """Wait until every session has closed and every event it emitted is confirmed by Redis.

    Sessions emit their last events when they close (synchronously into the sink's queue), so once no
    session is open and neither memory nor spool holds an event, the stream is complete: what it holds
    can be counted exactly.
    """
    found: Samples = {}

    def quiet() -> bool:
        nonlocal found
        _text, found = scrape(proxy)
        return (value(found, "fasterdata_proxy_connections_active") == 0
                and value(found, "fasterdata_sink_queued") == 0
                and value(found, "fasterdata_sink_spool_events") == 0
                and value(found, "fasterdata_sink_redis_up") == 1)

    wait_until(quiet, "the proxy's sessions to close and its sink to drain", timeout)
    return found
