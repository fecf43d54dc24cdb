"""Other projects' own test suites, run once directly and once through the proxy.

A proxy that forwards bytes untouched must not change any outcome, so each suite's failures through the
proxy must be exactly its failures direct, and each statement the proxy saw must be in the stream once.
The suites are the peers' own: asyncpg's (from its sdist, against this machine's server through PGHOST),
node-postgres's pool suite (pg-pool from npm, driving the current `pg` client), and sqlsmith (Debian),
which sends random valid SQL until a query count.

    python bench/peers/run.py                       # all three
    python bench/peers/run.py --suites sqlsmith --sqlsmith-queries 20000

Downloads and the suites' own virtual environment are kept in --workdir between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import HOST, loadavg, publish, terminate  # noqa: E402

from fasterdata.proxy.events import KIND_STMT, events_of  # noqa: E402

PG_PORT = 5432
PG_USER = "postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
POOL_VERSION = "2.0.10"  # the last pg-pool release that ships its tests in the npm package
PG_CLIENT = "8"


@dataclass
class Outcome:
    """One run of a suite: each test's result by its id, and anything the runner itself said went wrong."""

    results: dict[str, str] = field(default_factory=dict)  # test id -> passed / failed / skipped
    note: str = ""

    def count(self, kind: str) -> int:
        return sum(1 for r in self.results.values() if r == kind)

    def failed(self) -> set[str]:
        return {t for t, r in self.results.items() if r == "failed"}


@dataclass
class Capture:
    """What the proxy says it captured, against what the stream holds."""

    captured: int
    in_stream: int
    dropped: int


# -- processes -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run(cmd: list[str], what: str, **kw: object) -> subprocess.CompletedProcess:
    print(f"  {what}: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def proxy(workdir: Path, prefix: str) -> Iterator[tuple[int, int]]:
    """`fasterdata proxy` as operators run it, capture on; yields its client and metrics ports."""
    port, metrics = free_port(), free_port()
    exe = Path(sys.executable).parent / "fasterdata"
    cmd = [str(exe) if exe.exists() else "fasterdata", "proxy", "--listen", f"{HOST}:{port}",
           "--upstream", f"{HOST}:{PG_PORT}", "--upstream-sslmode", "disable", "--metrics", f"{HOST}:{metrics}",
           "--redis", REDIS_URL, "--prefix", prefix, "--log-level", "warning", "--no-log-connections"]
    log = (workdir / f"{prefix}.proxy.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the proxy did not start: see {log.name}")
            time.sleep(0.1)
        yield port, metrics
    finally:
        terminate(proc, 10.0)
        log.close()


def scrape(port: int) -> dict[str, float]:
    """Sums of each sample name on /metrics (labels folded)."""
    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10).read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def stream_events(r: redis.Redis, key: str) -> int:
    n, last = 0, "-"
    while True:
        chunk = r.xrange(key, min=last, count=1000)
        chunk = [e for e in chunk if e[0] != last]
        if not chunk:
            return n
        # Statements only: a transaction held past max_held also gets a txn_end marker, which is no statement.
        n += sum(1 for _id, fields in chunk for ev in events_of(fields) if ev.get("kind") == KIND_STMT)
        last = chunk[-1][0]


def settled_capture(r: redis.Redis, metrics: int, prefix: str) -> Capture:
    """Wait until the sink has sent all it holds (queued and spooled zero, stream still), then count."""
    key = stream_name(prefix)
    deadline = time.monotonic() + 60
    last = -1
    while True:
        m = scrape(metrics)
        now = stream_events(r, key)
        idle = m.get("fasterdata_sink_queued", 0) == 0 and m.get("fasterdata_sink_spool_events", 0) == 0
        if (idle and now == last) or time.monotonic() > deadline:
            captured = int(m.get("fasterdata_proxy_statements_total", 0))
            dropped = int(sum(v for k, v in m.items() if k.startswith("fasterdata_sink_dropped")))
            return Capture(captured, now, dropped)
        last = now
        time.sleep(1.0)


# -- asyncpg -------------------------------------------------------------------------------------------


def asyncpg_prepare(workdir: Path) -> tuple[Path, Path]:
    """A venv with the asyncpg release this project tests against, and that release's tests/ folder."""
    version = importlib.metadata.version("asyncpg")
    venv = workdir / f"asyncpg-{version}-venv"
    tests = workdir / f"asyncpg-{version}-tests"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)], "venv", check=True)
        run([str(venv / "bin" / "pip"), "install", "-q", f"asyncpg=={version}", "pytest", "distro", "uvloop"],
            "install", check=True)
    if not tests.exists():
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "asyncpg",
             f"asyncpg=={version}", "-d", str(workdir)], "sdist", check=True)
        with tarfile.open(workdir / f"asyncpg-{version}.tar.gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"asyncpg-{version}/tests/")]
            tar.extractall(workdir / "sdist", members=members, filter="data")
        # Only tests/: the sdist's asyncpg/ source folder would shadow the installed, compiled package.
        shutil.move(workdir / "sdist" / f"asyncpg-{version}" / "tests", tests / "tests")
    return venv, tests


def asyncpg_run(workdir: Path, port: int, label: str) -> Outcome:
    venv, tests = asyncpg_prepare(workdir)
    report = workdir / f"asyncpg-{label}.xml"
    env = {**os.environ, "PGHOST": HOST, "PGPORT": str(port), "PGUSER": PG_USER, "PGSSLMODE": "disable"}
    done = run([str(venv / "bin" / "python"), "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
                f"--junitxml={report}"], f"asyncpg {label}", cwd=tests, env=env, capture_output=True, text=True,
               timeout=3600)
    out = Outcome()
    if not report.exists():
        out.note = f"no report (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        return out
    for case in ET.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        out.results[test] = ("failed" if kinds & {"failure", "error"} else
                             "skipped" if "skipped" in kinds else "passed")
    return out


def asyncpg_passes(workdir: Path, port: int, test: str) -> bool:
    """One asyncpg test, run alone: `tests.test_x.TestY::test_z` as the junit report names it."""
    venv, tests = asyncpg_prepare(workdir)
    classname, name = test.split("::")
    parts = classname.split(".")
    cut = next(i for i, part in enumerate(parts) if part[:1].isupper())
    node = "/".join(parts[:cut]) + ".py::" + "::".join([*parts[cut:], name])
    env = {**os.environ, "PGHOST": HOST, "PGPORT": str(port), "PGUSER": PG_USER, "PGSSLMODE": "disable"}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=tests, env=env, capture_output=True, timeout=600)
    return done.returncode == 0


# -- node-postgres -------------------------------------------------------------------------------------


def node_prepare(workdir: Path) -> Path:
    """pg-pool's package with its mocha suite, its dev dependencies, and the current `pg` client."""
    here = workdir / f"pg-pool-{POOL_VERSION}"
    if not (here / "node_modules" / "pg").exists():
        here.mkdir(parents=True, exist_ok=True)
        run(["npm", "pack", "--silent", f"pg-pool@{POOL_VERSION}"], "npm pack", cwd=workdir, check=True,
            capture_output=True)
        with tarfile.open(workdir / f"pg-pool-{POOL_VERSION}.tgz") as tar:
            tar.extractall(workdir / "npm", filter="data")
        shutil.rmtree(here)
        shutil.move(workdir / "npm" / "package", here)
        run(["npm", "install", "--no-audit", "--no-fund", "--silent"], "npm install", cwd=here, check=True)
        run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--no-save", f"pg@{PG_CLIENT}"],
            "npm install pg", cwd=here, check=True)
    return here


_TAP = re.compile(r"^(ok|not ok) (\d+) (.*?)(?: # (SKIP|skip).*)?$")


def node_run(workdir: Path, port: int, label: str) -> Outcome:
    here = node_prepare(workdir)
    # The suite turns any process warning into a failure; the deprecation warnings are the client's, not ours.
    env = {**os.environ, "PGHOST": HOST, "PGPORT": str(port), "PGUSER": PG_USER, "PGDATABASE": "postgres",
           "NODE_OPTIONS": "--no-deprecation"}
    done = run([str(here / "node_modules" / ".bin" / "mocha"), "--reporter", "tap"], f"pg-pool {label}",
               cwd=here, env=env, capture_output=True, text=True, timeout=1800)
    out = Outcome()
    for line in done.stdout.splitlines():
        m = _TAP.match(line)
        if m:
            out.results[m[3]] = "skipped" if m[4] else ("passed" if m[1] == "ok" else "failed")
    if not out.results:
        out.note = f"no TAP lines (exit {done.returncode}): {done.stdout.strip()[-300:]}"
    return out


# -- sqlsmith ------------------------------------------------------------------------------------------


def sqlsmith_run(workdir: Path, port: int, label: str, queries: int, seed: int) -> Outcome:
    """sqlsmith against a scratch database with a few tables; passes when it ends by its own query count."""
    exe = shutil.which("sqlsmith")
    out = Outcome()
    if exe is None:
        out.note = "sqlsmith is not installed (apt-get install sqlsmith)"
        return out
    db = f"fd_peers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host=HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        with psycopg.connect(host=HOST, port=PG_PORT, user=PG_USER, dbname=db, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text, region text, since date)")
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, "
                         "amount numeric(12,2), placed timestamptz, note text)")
            conn.execute("INSERT INTO customers (name, region, since) SELECT 'c' || i, 'r' || i % 7, "
                         "date '2024-01-01' + i FROM generate_series(1, 200) i")
            conn.execute("INSERT INTO orders (customer_id, amount, placed, note) SELECT 1 + i % 200, i * 1.25, "
                         "now() - i * interval '1 hour', 'n' || i FROM generate_series(1, 2000) i")
        target = f"host={HOST} port={port} dbname={db} user={PG_USER} sslmode=disable"
        log = workdir / f"sqlsmith-{label}.log"
        with log.open("w") as f:
            done = run([exe, f"--target={target}", f"--max-queries={queries}", f"--seed={seed}", "--verbose"],
                       f"sqlsmith {label}", stdout=f, stderr=subprocess.STDOUT, timeout=3600,
                       env={**os.environ, "PGOPTIONS": "-c statement_timeout=1000"})
        tail = log.read_text(errors="replace")[-2000:]
        lost = re.search(r"(server closed the connection|connection .*(lost|refused|reset)|broken)", tail, re.I)
        out.results["sqlsmith"] = "passed" if done.returncode == 0 and not lost else "failed"
        if out.results["sqlsmith"] == "failed":
            out.note = f"exit {done.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
    finally:
        with psycopg.connect(host=HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return out


# -- report --------------------------------------------------------------------------------------------


Reruns = dict[str, tuple[int, int, int]]  # test -> (runs, failures direct, failures through the proxy)


def row(name: str, direct: Outcome, through: Outcome, cap: Capture, reruns: Reruns) -> tuple[str, bool]:
    """The report's row for a suite, and whether it passes: the same outcomes, and a complete capture.

    A test whose outcome differed is told apart by its reruns: one that also fails direct is the suite's own
    flake on a loaded machine; one that fails only through the proxy is a difference the proxy makes."""
    only_proxy = sorted(through.failed() - direct.failed())
    only_direct = sorted(direct.failed() - through.failed())
    differs = [t for t in only_proxy + only_direct if t not in reruns or (reruns[t][2] > 0 and reruns[t][1] == 0)]
    same = not differs and set(direct.results) == set(through.results) and not through.note
    complete = cap.captured == cap.in_stream and cap.dropped == 0
    cells = [name, f"{direct.count('passed')}/{direct.count('failed')}/{direct.count('skipped')}",
             f"{through.count('passed')}/{through.count('failed')}/{through.count('skipped')}", "yes" if same else "NO",
             str(cap.captured), str(cap.in_stream), str(cap.dropped),
             "yes" if complete else "NO"]
    lines = ["| " + " | ".join(cells) + " |"]
    for side, tests in (("through the proxy", only_proxy), ("direct", only_direct)):
        for test in tests:
            again = ""
            if test in reruns:
                runs, fail_direct, fail_proxy = reruns[test]
                again = f"; rerun {runs}×: failed {fail_direct} direct, {fail_proxy} through the proxy"
            lines.append(f"|   failed only {side} in the full run: `{test}`{again} |")
    for note in (direct.note, through.note):
        if note:
            lines.append(f"|   note: {note} |")
    return "\n".join(lines), same and complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="asyncpg,node-pg,sqlsmith", help="comma-separated [all three]")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fasterdata-peers",
                        help="downloads, venvs and logs, kept between runs [~/.cache/fasterdata-peers]")
    parser.add_argument("--sqlsmith-queries", type=int, default=5000, metavar="N", help="[5000]")
    parser.add_argument("--seed", type=int, default=7, help="sqlsmith's seed, the same for both runs [7]")
    parser.add_argument("--reruns", type=int, default=10, metavar="N",
                        help="runs, each side, of an asyncpg test whose outcome differed [10]")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    suites: dict[str, Callable[[int, str], Outcome]] = {
        "asyncpg": lambda port, label: asyncpg_run(args.workdir, port, label),
        "node-pg": lambda port, label: node_run(args.workdir, port, label),
        "sqlsmith": lambda port, label: sqlsmith_run(args.workdir, port, label, args.sqlsmith_queries, args.seed),
    }
    wanted = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in suites]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}: choose from {', '.join(suites)}")
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    started = dt.datetime.now(dt.UTC)
    rows: list[tuple[str, bool]] = []
    for name in wanted:
        print(f"{name}:", flush=True)
        direct = suites[name](PG_PORT, "direct")
        prefix = f"fdpeers-{name}-{uuid.uuid4().hex[:6]}"
        try:
            with proxy(args.workdir, prefix) as (port, metrics):
                through = suites[name](port, "proxy")
                reruns: Reruns = {}
                if name == "asyncpg":
                    for test in sorted(through.failed() ^ direct.failed()):
                        fails = [sum(not asyncpg_passes(args.workdir, p, test) for _ in range(args.reruns))
                                 for p in (PG_PORT, port)]
                        reruns[test] = (args.reruns, fails[0], fails[1])
                cap = settled_capture(r, metrics, prefix)
        finally:
            for key in r.scan_iter(f"{prefix}:*"):
                r.delete(key)
        rows.append(row(name, direct, through, cap, reruns))
    doc = "\n".join([
        f"# Peers' own suites, direct and through the proxy ({started:%Y-%m-%d %H:%M} UTC, load {loadavg()})",
        "",
        "passed/failed/skipped; 'same' = the same tests, failing the same way; captured = the proxy's "
        "fasterdata_proxy_statements_total, in stream = events read back from its stream.",
        "",
        "| suite | direct | through the proxy | same | captured | in stream | dropped | complete |",
        "|---|---|---|---|---|---|---|---|",
        *(text for text, _ok in rows),
    ])
    publish(doc, args.output)
    return 0 if all(ok for _text, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
