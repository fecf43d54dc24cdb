"""Logs a person (or a log pipeline) can read: JSON on request, the session id on session lines."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys

import psycopg
import pytest

from fasterdata.proxy import logs, wire
from tests.kit.processes import ProxyProcess


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


def test_log_lines_follow_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup() once, stderr swapped afterwards (pytest's capture, an embedding program): lines go to the
    current stderr, and a closed earlier one raises nothing ("Logging error … closed file" before)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        logs.setup("info")
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("fasterdata.test").info("after the swap")
    finally:
        root.handlers[:], root.level = saved
    assert second.getvalue().endswith("fasterdata.test: after the swap\n"), second.getvalue()
    assert "Logging error" not in second.getvalue()
