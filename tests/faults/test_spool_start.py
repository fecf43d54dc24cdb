"""A spool directory the proxy cannot use at start: it refuses to start with one readable line.

Starting anyway would take traffic with the safety net missing, found out only at the next Redis outage.
(A spool that fails while running is covered by tests/faults/test_spool_full.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit.processes import StartProxy


@pytest.mark.parametrize("plane", ["python", "native"])
def test_unusable_spool_dir_stops_the_start(start_proxy: StartProxy, tmp_path: Path, plane: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proxy = start_proxy("--data-plane", plane, env={"FASTERDATA_SPOOL_DIR": str(blocker / "spool")}, wait=False)
    assert proxy.proc.wait(timeout=60) == 1
    log = proxy.log()
    assert "Traceback" not in log, log
    assert "cannot use the spool" in log and str(blocker / "spool") in log and "Not a directory" in log, log
    assert "spool_dir must be a writable directory" in log, log
