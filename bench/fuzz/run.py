#!/usr/bin/env python3
"""A long fuzz run: the suite's Hypothesis fuzz targets with a far larger budget than CI gives them.

CI runs each target with the "ci" profile of tests/conftest.py (a few hundred examples). Here the
"fuzz" profile is loaded instead, and each target is called again and again — every call a fresh
random seed and --examples examples — until its share of --minutes is used up. Targets:

- tests/test_wire.py `test_fuzz_*`: arbitrary bytes, cut anywhere, into the frontend and backend decoders
  and the body parsers;
- tests/capture/test_session_fuzz.py: random messages in random order into a Session; whole conversations
  a server could produce, pipelined (one event per statement, in order); the same conversations with
  messages dropped, repeated, swapped or answered early (valid alone, out of order for the state machine).

Memory must stay bounded: VmRSS is read after every call (after a gc) and ru_maxrss before and after,
so a leak across examples — a cache that never stops growing — shows as RSS rising call after call.

    .venv/bin/python bench/fuzz/run.py --minutes 10
    .venv/bin/python bench/fuzz/run.py --minutes 1 --output ''      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # bench/: benchkit
from benchkit import loadavg, publish  # noqa: E402

MODULES = ("tests.test_wire", "tests.capture.test_session_fuzz")


@dataclass
class Result:
    """One target's run: calls of the Hypothesis test, examples executed, memory along the way."""

    name: str
    calls: int = 0
    examples: int = 0
    seconds: float = 0.0
    failure: str = ""
    rss_kb: list[int] = field(default_factory=list)  # VmRSS after each call
    maxrss_before_kb: int = 0
    maxrss_after_kb: int = 0


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def load_targets(examples: int, only: Sequence[str]) -> list[tuple[str, Callable[[], None]]]:
    """Import the fuzz modules under the "fuzz" profile (settings are fixed when a test is decorated)."""
    os.environ["FASTERDATA_HYPOTHESIS_PROFILE"] = "fuzz"
    os.environ["FASTERDATA_FUZZ_EXAMPLES"] = str(examples)
    sys.path.insert(0, str(ROOT))
    import importlib

    importlib.import_module("tests.conftest")  # registers and loads the profiles
    import hypothesis

    assert hypothesis.settings.get_current_profile_name() == "fuzz"
    targets = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, fn in vars(module).items():
            if not (name.startswith("test_") and hasattr(fn, "hypothesis")):
                continue
            if module_name.endswith("test_wire") and not name.startswith("test_fuzz_"):
                continue
            full = f"{module_name.replace('.', '/')}.py::{name}"
            if not only or any(o in full for o in only):
                targets.append((full, fn))
    return targets


def run_target(name: str, fn: Any, budget: float) -> Result:
    """Call the test until ``budget`` seconds are spent; a failure ends the target (Hypothesis shrank it)."""
    res = Result(name, maxrss_before_kb=max_rss_kb())
    inner = fn.hypothesis.inner_test

    def counting(*args: Any, **kwargs: Any) -> Any:
        res.examples += 1
        return inner(*args, **kwargs)

    fn.hypothesis.inner_test = counting  # Hypothesis's documented hook for wrapping the test body
    start = time.monotonic()
    try:
        while time.monotonic() - start < budget:
            try:
                fn()
            except Exception:  # any failure is the finding; Hypothesis printed its example
                res.failure = traceback.format_exc(limit=6)
                res.calls += 1
                break
            res.calls += 1
            gc.collect()
            res.rss_kb.append(vm_rss_kb())
            print(f"  {name}: call {res.calls}, {res.examples:,} examples, VmRSS {res.rss_kb[-1] / 1024:.1f} MiB",
                  flush=True)
    finally:
        fn.hypothesis.inner_test = inner
    res.seconds = time.monotonic() - start
    res.maxrss_after_kb = max_rss_kb()
    return res


def report(args: argparse.Namespace, results: Sequence[Result], started: dt.datetime, load: tuple[str, str]) -> str:
    import hypothesis

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "proxy"], capture_output=True,
                           text=True).stdout.strip()
    rows = ["| target | calls | examples run | examples/s | failures | VmRSS MiB after 1st call → last (min–max) "
            "| ru_maxrss MiB before → after |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rss = r.rss_kb
        mem = (f"{rss[0] / 1024:.1f} → {rss[-1] / 1024:.1f} ({min(rss) / 1024:.1f}–{max(rss) / 1024:.1f})"
               if rss else "—")
        rows.append(f"| `{r.name}` | {r.calls} | {r.examples:,} | {r.examples / r.seconds:,.0f} "
                    f"| {1 if r.failure else 0} | {mem} "
                    f"| {r.maxrss_before_kb / 1024:.1f} → {r.maxrss_after_kb / 1024:.1f} |")
    total = sum(r.examples for r in results)
    failures = [r for r in results if r.failure]
    lines = [
        "# fasterdata long fuzz run",
        "",
        f"- run: {started:%Y-%m-%d %H:%M} UTC; command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- machine: nproc={os.cpu_count()}; load average before/after: {load[0]} / {load[1]}; "
        f"Python {platform.python_version()}; Hypothesis {hypothesis.__version__}; proxy at {commit}"
        f"{' + uncommitted changes in proxy/' if dirty else ''}",
        f"- profile \"fuzz\" (tests/conftest.py): {args.examples:,} examples per call, a fresh seed each call, "
        f"no example database; {args.minutes:g} min shared equally by {len(results)} targets",
        "- examples run = calls of the test body (generation, plus any shrinking after a failure); VmRSS read "
        "after each call once garbage is collected: flat from call to call means no state survives an example "
        "(it steps up between targets: Hypothesis keeps state per test function)",
        "",
        *rows,
        "",
        f"**{total:,} examples, {len(failures)} failing target(s), peak RSS (ru_maxrss) "
        f"{max(r.maxrss_after_kb for r in results) / 1024:.1f} MiB.**",
    ]
    for r in failures:
        lines += ["", f"## Failure: `{r.name}`", "", "```", r.failure.rstrip(), "```"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="total time, shared by the targets [10]")
    p.add_argument("--examples", type=int, default=5000, help="examples per call of a target [5000]")
    p.add_argument("--only", nargs="*", default=[], help="run targets whose name contains one of these")
    p.add_argument("--output", default=str(HERE / "results.md"), help="Markdown file, overwritten ['' skips]")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.examples < 1:
        p.error("--minutes > 0 and --examples ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_before = loadavg()
    targets = load_targets(args.examples, args.only)
    if not targets:
        sys.exit("no fuzz target matches --only")
    budget = args.minutes * 60 / len(targets)
    results = []
    for name, fn in targets:
        print(f"{name}: {budget:.0f} s", flush=True)
        results.append(run_target(name, fn, budget))
    load_after = loadavg()
    doc = report(args, results, started, (load_before, load_after))
    publish(doc, args.output)
    return 1 if any(r.failure for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
