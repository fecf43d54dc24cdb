"""`fasterdata demo` end to end: business metrics move within a minute, the commands it prints run as
printed, its own schema setup raises no finding, SIGINT leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import redis

from fasterdata.analyzers.keys import Keys
from fasterdata.demo.run import PREFIX, business_metrics
from fasterdata.demo.shop import SETUP_APP
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.services import REDIS_URL, direct_dsn
from tests.kit.streams import entries

ROOT = Path(__file__).resolve().parents[1]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def without_fasterdata_on_path() -> dict[str, str]:
    """The environment of a shell whose virtualenv is not active: no PATH entry holds a `fasterdata`."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "fasterdata").exists()]
    return {**os.environ, "PATH": os.pathsep.join(dirs)}


def printed_command(output: str, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s+(.+)$", output, re.M)
    assert match, f"the demo printed no {label!r} line:\n{output}"
    return match.group(1)


def test_demo_shows_business_metrics_and_cleans_up() -> None:
    env = without_fasterdata_on_path()
    proc = subprocess.Popen([sys.executable, "-m", "fasterdata", "demo", "--shoppers", "2", "--rate", "10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"Analyzer metrics:\s+http://127\.0\.0\.1:(\d+)/metrics", "".join(output))
            port = int(match.group(1)) if match else None
            time.sleep(0.2)
        assert port, "demo never printed its analyzer metrics URL:\n" + "".join(output)
        database = re.search(r"dbname=(\S+?)\"", "".join(output)).group(1)
        metrics: dict[str, float] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = business_metrics(port)
            if metrics.get("fasterdata_business_sales_amount", 0) > 0:
                break
            time.sleep(1)
        assert metrics.get("fasterdata_business_sales_amount", 0) > 0, (metrics, "".join(output))
        assert metrics.get("fasterdata_business_orders_placed", 0) > 0, metrics
        # The live view, pasted into the shell the demo runs in (no virtualenv on its PATH).
        top = printed_command("".join(output), "Live view")
        shown = subprocess.run(f"{top} --once", shell=True, cwd="/", env=env, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0, (top, shown.stdout + shown.stderr)
        assert shown.stdout.strip(), top
        # The schema setup says who it is, and its DDL is allowed: the analyzer, already past it (business
        # metrics come from later statements), found nothing.
        keys = Keys(PREFIX)
        r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        setup = [e["sql"] for _id, e in entries(r, keys.statements) if e.get("app") == SETUP_APP]
        assert any(sql.startswith("CREATE TABLE") for sql in setup), setup
        assert r.hget(keys.alert_counts, "ddl") is None, r.hgetall(keys.alert_counts)
        assert not [f for _id, f in r.xrange(keys.alerts) if f.get("rule") == "ddl"]
        # A second demo on the same Redis would share the key prefix (and delete it on exit): refused.
        second = subprocess.run([sys.executable, "-m", "fasterdata", "demo", "--duration", "5"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"another fasterdata demo (pid {proc.pid}) is using this Redis" in second.stdout + second.stderr
        assert redis.Redis.from_url(REDIS_URL).exists(stream_name(PREFIX)), "the refused demo deleted keys"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
        reader.join(5)
    text = "".join(output)
    assert code == 0, text
    assert "demo stopped" in text
    assert not processes_mentioning(f"--prefix {PREFIX}"), "demo children still running"
    with psycopg.connect(direct_dsn()) as conn:
        assert not conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
    assert not list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"{PREFIX}:*", count=1000))
