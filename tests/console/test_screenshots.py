"""`fasterdata console --screenshots DIR`, the documented command: a PNG of every view, taken from Redis as
the workload left it."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from fasterdata.console.screenshots import VIEWS
from tests.console.kit import Shop
from tests.kit.processes import ROOT
from tests.kit.services import REDIS_URL


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_screenshots_of_every_view(shop: Shop, browser: Any, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fasterdata", "console", "--redis", REDIS_URL, "--prefix", shop.prefix,
                           "--screenshots", str(tmp_path / "shots")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    written = [Path(line) for line in done.stdout.split()]
    assert [p.name for p in written] == [f"console-{v}.png" for v in VIEWS]
    for path in written:
        width, height = png_size(path)
        assert width == 1280 and height >= 600, (path, width, height)
        assert path.stat().st_size > 10_000, path  # a drawn page, not a blank one
