"""Logs a person (or a log pipeline) can read: JSON on request, the session id on session lines."""

from __future__ import annotations

import json
import socket

import psycopg

from proxy import wire

from .conftest import ProxyProcess


def test_json_logs_carry_the_session_id(start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy: ProxyProcess = start_proxy("--log-format", "json")
    with psycopg.connect(proxy.dsn(), application_name="log-test") as conn:
        conn.execute("select 1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        while b"Z" not in (chunk := raw.recv(65536)) and chunk:
            pass
        raw.sendall(b"Q" + (-5).to_bytes(4, "big", signed=True))  # malformed: closes this session
        while raw.recv(65536):
            pass
    assert proxy.stop() == 0
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in lines)
    session_lines = [e for e in lines if e["msg"].startswith("[")]
    assert any("application=log-test" in e["msg"] for e in session_lines)
    assert any("closing session" in e["msg"] and e["level"] == "warning" for e in session_lines)
    for entry in session_lines:
        assert entry["msg"].startswith(f"[{entry['sid']}] ")
