"""Injection findings under a real attack: a vulnerable web app (app.py) talks to PostgreSQL through
`fasterdata proxy`; an analyzer worker (`fasterdata analyze`, the shipped rules with dedup_seconds 0 so
every finding is written as an alert) reads the stream; sqlmap attacks the app's endpoints while a
benign driver keeps sending normal and tricky inputs.

Not a timed test: it prints a table. Detection is over the injected statements (the app knows which
inputs changed the SQL's structure), false positives over every other statement the app ran (benign
traffic, sqlmap's harmless requests, the escaping and the bound-parameter endpoints), and the time from
statement to alert is the alert's stream id time minus the statement's event ts.

    .venv/bin/python bench/security/run.py [--sqlmap /usr/bin/sqlmap] [--level 1] [--risk 1]

It runs against 127.0.0.1 only, in a database and a Redis prefix of its own, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import redis
import yaml

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import SCHEMA, Pool, Shop, serve  # noqa: E402

from fasterdata.proxy.events import events_of  # noqa: E402

TARGETS = [  # (name, url path, form data or None, parameter, more sqlmap options)
    ("integer id", "/item?id=1", None, "id", []),
    ("integer id, /**/ for spaces", "/item?id=2", None, "id", ["--tamper=space2comment"]),
    ("LIKE search", "/search?q=chair", None, "q", []),
    ("login form", "/login", "username=alice&password=hunter2", "username", []),
    ("login form, password", "/login", "username=alice&password=hunter2", "password", []),
    ("ORDER BY", "/list?sort=name", None, "sort", []),
    ("escaped correctly", "/customer?last=Smith", None, "last", []),
    ("bound parameter", "/safe?q=chair", None, "q", []),
]
WORDS = ["chair", "lamp", "union jack", "select fabric", "a--b", "50%", "x;y", "drop-leaf table", "or else",
         "product 1", "1=1 sticker"]
NAMES = ["O'Brien", "Smith';SELECT PG_SLEEP(5)--", "D'Angelo", "Lee -- jr", "Smith", "it's; -- fine", "Jones"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def request(base: str, path: str, form: str | None = None, source: str = "benign") -> int:
    req = urllib.request.Request(base + path, data=form.encode() if form else None,
                                 headers={"X-Bench-Source": source})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def benign_request(base: str, rng: random.Random) -> None:
    """Normal use, with inputs that read like an attack to a regular expression (but not to PostgreSQL)."""
    q = urllib.parse.quote
    pick = rng.randrange(6)
    if pick == 0:
        request(base, f"/item?id={rng.randint(1, 60)}")
    elif pick == 1:
        request(base, f"/search?q={q(rng.choice(WORDS))}")
    elif pick == 2:
        user, pw = rng.choice([("alice", "hunter2"), ("bob", "x-y;z"), ("carol", "wrong -- pw"), ("dave", "pa55")])
        request(base, "/login", f"username={q(user)}&password={q(pw)}")
    elif pick == 3:
        request(base, f"/list?sort={rng.choice(['name', 'price', 'id'])}")
    elif pick == 4:
        request(base, f"/customer?last={q(rng.choice(NAMES))}")
    else:
        request(base, f"/safe?q={q(rng.choice(WORDS + NAMES + ['1 OR 1=1']))}")


def benign_traffic(base: str, stop: threading.Event, seed: int, pause: float) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        benign_request(base, rng)
        time.sleep(pause)


def sqlmap(binary: str, base: str, target: tuple[str, str, str | None, str, list[str]], out: Path, level: int,
           risk: int, timeout: float) -> float:
    name, path, form, param, more = target
    cmd = [binary, "-u", base + path, "--batch", "--dbms=PostgreSQL", "-p", param, f"--level={level}",
           f"--risk={risk}", "--time-sec=1", "--threads=1", "--flush-session", "--disable-coloring",
           f"--output-dir={out}", "--headers=X-Bench-Source: attack", "-D", "public", "-T", "users", "--dump", *more]
    if form:
        cmd += ["--data", form]
    t0 = time.monotonic()
    with open(out / f"sqlmap-{name.replace(' ', '_').replace('/', '')}.log", "wb") as log:
        try:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            print(f"  sqlmap on {name}: stopped after {timeout:.0f} s", flush=True)
    return time.monotonic() - t0


def group_idle(r: redis.Redis, stream: str) -> bool:
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    return bool(groups) and all(not g.get("lag") and not g.get("pending") for g in groups)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", default=os.environ.get("FASTERDATA_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL the proxy forwards to")
    ap.add_argument("--pg-user", default=os.environ.get("PGUSER", "root"))
    ap.add_argument("--sqlmap", default=shutil.which("sqlmap") or "sqlmap")
    ap.add_argument("--level", type=int, default=3, help="sqlmap --level: 3 tries ORDER BY and more contexts")
    ap.add_argument("--risk", type=int, default=3, help="sqlmap --risk: 2 adds heavy queries, 3 OR-based ones "
                    "(harmless here: the app only reads)")
    ap.add_argument("--warmup", type=int, default=400, help="benign requests before the attack (learning)")
    ap.add_argument("--sqlmap-timeout", type=float, default=420)
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    prefix, db = f"fdsec{tag}", f"fdsec_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="fdsecbench-"))
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    pg_host, pg_port = args.pg.rsplit(":", 1)
    admin = f"host={pg_host} port={pg_port} user={args.pg_user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    procs: list[subprocess.Popen] = []
    pool = None
    try:
        with psycopg.connect(f"host={pg_host} port={pg_port} user={args.pg_user} dbname={db}", autocommit=True) as c:
            c.execute(SCHEMA)
        rules = yaml.safe_load((ROOT / "config" / "rules.yaml").read_text())
        rules["security"]["dedup_seconds"] = 0  # every finding an alert, so each statement can be scored
        rules_path = tmp / "rules.yaml"
        rules_path.write_text(yaml.safe_dump(rules))
        proxy_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fasterdata", "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream",
             args.pg, "--metrics", "", "--redis", args.redis, "--prefix", prefix],
            stdout=open(tmp / "proxy.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env))  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fasterdata", "analyze", "--redis", args.redis, "--prefix", prefix, "--metrics",
             "", "--rules", str(rules_path), "--consumer", "bench"],
            stdout=open(tmp / "analyze.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env))  # noqa: SIM115
        wait_port(proxy_port)
        pool = Pool(f"host=127.0.0.1 port={proxy_port} user={args.pg_user} dbname={db}")
        shop = Shop(pool)
        app_port = free_port()
        server = serve(shop, app_port)
        base = f"http://127.0.0.1:{app_port}"
        print(f"app {base}, proxy 127.0.0.1:{proxy_port}, prefix {prefix}, db {db}, logs {tmp}", flush=True)

        rng = random.Random(7)  # learning: normal use from the pool's sessions
        threads = [threading.Thread(target=lambda s=s: [benign_request(base, random.Random(s))
                                                         for _ in range(args.warmup // 4)]) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"warm-up: {args.warmup} benign requests", flush=True)

        stop = threading.Event()
        background = threading.Thread(target=benign_traffic, args=(base, stop, rng.randrange(1 << 30), 0.05))
        background.start()
        for target in TARGETS:
            took = sqlmap(args.sqlmap, base, target, tmp, args.level, args.risk, args.sqlmap_timeout)
            print(f"  sqlmap on {target[0]}: {took:.0f} s", flush=True)
        stop.set()
        background.join()
        server.shutdown()

        stream = stream_name(prefix)
        deadline = time.monotonic() + 120
        time.sleep(2)  # the proxy's sink flushes on an interval
        while not group_idle(r, stream) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        report(r, prefix, shop, tmp)
        return 0
    finally:
        if pool is not None:
            pool.close()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for key in r.scan_iter(f"{prefix}:*", count=1000):
            r.delete(key)


def report(r: redis.Redis, prefix: str, shop: Shop, tmp: Path) -> None:
    truth: dict[str, tuple[bool, str, str]] = {}  # sql as captured → (injected, source, endpoint)
    for s in shop.sent:
        sql = s.sql.replace("%s", "$1")
        old = truth.get(sql)
        truth[sql] = (s.injected, s.source if old is None or old[1] == s.source else "both", s.endpoint)
    events = [ev for _, fields in r.xrange(stream_name(prefix)) for ev in events_of(fields)]
    alerts: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for entry_id, f in r.xrange(f"{prefix}:alerts"):
        if f.get("kind") != "security":
            continue
        key = (f.get("sid", ""), f.get("ts", ""))
        ms = int(entry_id.split("-")[0])
        first = alerts.get(key)
        alerts[key] = (min(ms, first[0]) if first else ms, (first[1] if first else []) + [f["rule"]])
    inj_total = inj_hit = 0
    benign_total = Counter()
    benign_hit: list[tuple[str, str, list[str]]] = []
    latency: list[float] = []  # from the statement's start (the event's ts)
    after_end: list[float] = []  # from its end (ts + dur_us): what the pipeline adds
    by_endpoint: dict[str, list[int]] = {}
    rules = Counter()
    protos = Counter()
    missed: list[str] = []
    for ev in events:
        t = truth.get(ev.get("sql", ""))
        if t is None:
            continue  # the app's own SET, not a request's statement
        injected, source, endpoint = t
        hit = alerts.get((ev.get("sid", ""), ev.get("ts", "")))
        protos[ev.get("proto", "?")] += 1
        if injected:
            inj_total += 1
            row = by_endpoint.setdefault(endpoint, [0, 0])
            row[1] += 1
            if hit:
                inj_hit += 1
                row[0] += 1
                latency.append(hit[0] - int(ev["ts"]) / 1000)
                after_end.append(hit[0] - (int(ev["ts"]) + int(ev.get("dur_us") or 0)) / 1000)
                rules.update(set(hit[1]))
            else:
                missed.append(ev["sql"])
        else:
            benign_total[source] += 1
            if hit:
                benign_hit.append((source, ev["sql"], hit[1]))
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| injected statements flagged | {inj_hit} / {inj_total} ({inj_hit / max(1, inj_total):.1%}) |")
    for endpoint, (hit, total) in sorted(by_endpoint.items()):
        print(f"| … through {endpoint} | {hit} / {total} |")
    total_benign = sum(benign_total.values())
    print(f"| benign statements flagged (false positives) | {len(benign_hit)} / {total_benign} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(benign_total.items()))}) |")
    print(f"| statement start (event ts) → alert, p50 / p99 / max | {pct(latency, 0.5):.0f} / "
          f"{pct(latency, 0.99):.0f} / {max(latency, default=float('nan')):.0f} ms |")
    print(f"| statement end (ts + dur_us) → alert, p50 / p99 / max | {pct(after_end, 0.5):.0f} / "
          f"{pct(after_end, 0.99):.0f} / {max(after_end, default=float('nan')):.0f} ms |")
    print(f"| statements by protocol | {', '.join(f'{k}: {v}' for k, v in sorted(protos.items()))} |")
    print(f"| rules on injected statements | {', '.join(f'{k} {v}' for k, v in rules.most_common())} |")
    for source, sql, found in benign_hit[:20]:
        print(f"false positive ({source}, {found}): {sql[:200]}")
    for sql in missed[:30]:
        print(f"missed: {sql[:220]}")
    (tmp / "missed.txt").write_text("\n".join(missed))


if __name__ == "__main__":
    raise SystemExit(main())
